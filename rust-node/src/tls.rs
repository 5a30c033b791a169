//! Mutual TLS between nodes, without a CA.
//!
//! This module exists because node identity is bound to the TLS key: both sides present their
//! self-signed Ed25519 certificate (see [`crate::identity`]), and each side accepts the other's
//! certificate only because the TLS 1.3 handshake signature made with that certificate's key
//! verifies. The peer's id is then derived from the certificate's public key
//! (`SHA-256(raw Ed25519 public key)`), so a node cannot claim an id without holding its key.
//!
//! What is checked: the certificate parses as X.509 (webpki), its SubjectPublicKeyInfo is an
//! Ed25519 key, and the `CertificateVerify` signature verifies with that key (Ed25519 is the only
//! scheme offered or accepted). What is deliberately not checked: issuer, the certificate's own
//! self-signature, validity dates, names. None of them add anything when the trust anchor is the
//! key itself, and ignoring dates keeps nodes with skewed clocks talking.
//!
//! Expected ids: when dialling, the caller may say which id it expects. The verifier then fails
//! the handshake (the connection is never established) if the certificate's id differs, and
//! records the id it saw so the transport can report a typed `IdMismatch` with both ids.
//!
//! TLS 1.3 only; ALPN `macula-dht/1`; session resumption and 0-RTT disabled (connections are
//! long-lived and pooled, and a resumed session would skip the certificate check).

use std::fmt;
use std::sync::{Arc, OnceLock};

use macula_dht::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as RustlsError,
    SignatureScheme,
};

use crate::identity::{id_hex, node_id_from_public_key, Identity, PUBLIC_KEY_LEN};

/// ALPN protocol id of the node-to-node protocol.
pub const ALPN: &[u8] = b"macula-dht/1";

/// Server name used when dialling. Certificates are never checked against it (peers are
/// identified by key), but TLS needs one.
pub const SERVER_NAME: &str = "macula-dht";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration: the identity's private key could not be loaded, or the
    /// crypto provider does not support TLS 1.3.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] RustlsError),
}

/// The per-node TLS material, built once from an [`Identity`] and shared by every connection.
#[derive(Clone)]
pub struct TlsContext {
    provider: Arc<CryptoProvider>,
    certified: Arc<CertifiedKey>,
    id: NodeId,
}

impl TlsContext {
    /// Loads the identity's key into the ring crypto provider.
    pub fn new(identity: &Identity) -> Result<TlsContext, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signing_key = provider
            .key_provider
            .load_private_key(identity.private_key())?;
        let certified = Arc::new(CertifiedKey::new(
            vec![identity.certificate().clone()],
            signing_key,
        ));
        Ok(TlsContext {
            provider,
            certified,
            id: identity.id(),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Server side: requires a client certificate, accepts any self-signed Ed25519 one whose
    /// handshake signature verifies.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = Arc::new(PeerClientVerifier {
            algorithms: self.provider.signature_verification_algorithms,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCert(self.certified.clone())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// Client side, with an optional expected peer id. The returned verifier reports the id the
    /// peer presented after a handshake (see [`PeerServerVerifier::seen`]).
    pub fn client_config(
        &self,
        expect: Option<NodeId>,
    ) -> Result<(rustls::ClientConfig, Arc<PeerServerVerifier>), TlsError> {
        let verifier = Arc::new(PeerServerVerifier {
            algorithms: self.provider.signature_verification_algorithms,
            expect,
            seen: OnceLock::new(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(Arc::new(SingleCert(self.certified.clone())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_early_data = false;
        Ok((config, verifier))
    }
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContext")
            .field("id", &id_hex(&self.id))
            .finish_non_exhaustive()
    }
}

/// Why a certificate does not identify a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateIdError {
    /// The bytes do not parse as a DER-encoded X.509 certificate.
    #[error("certificate is not valid X.509 DER")]
    Malformed,
    /// The certificate's SubjectPublicKeyInfo is not a 32-byte Ed25519 key.
    #[error("certificate key is not Ed25519")]
    NotEd25519,
}

/// The raw Ed25519 public key of a certificate.
pub fn certificate_public_key(
    cert: &CertificateDer<'_>,
) -> Result<[u8; PUBLIC_KEY_LEN], CertificateIdError> {
    let parsed =
        webpki::EndEntityCert::try_from(cert).map_err(|_| CertificateIdError::Malformed)?;
    let spki = parsed.subject_public_key_info();
    let spki: &[u8] = spki.as_ref();
    let key = spki
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .ok_or(CertificateIdError::NotEd25519)?;
    key.try_into().map_err(|_| CertificateIdError::NotEd25519)
}

/// The node id a certificate stands for: SHA-256 of its raw Ed25519 public key.
pub fn certificate_id(cert: &CertificateDer<'_>) -> Result<NodeId, CertificateIdError> {
    certificate_public_key(cert).map(|key| node_id_from_public_key(&key))
}

/// The verified id of the peer of an established connection (from its certificate). `None` only
/// if the connection has no peer certificate, which the verifiers here never allow.
pub fn peer_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certificate_id(certs.first()?).ok()
}

/// Client-side verifier of the server's certificate.
#[derive(Debug)]
pub struct PeerServerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    expect: Option<NodeId>,
    seen: OnceLock<NodeId>,
}

impl PeerServerVerifier {
    /// The id the server presented, once its certificate has been seen (set even when it did not
    /// match the expected id, so the caller can report both).
    pub fn seen(&self) -> Option<NodeId> {
        self.seen.get().copied()
    }

    /// The expected id, if any.
    pub fn expected(&self) -> Option<NodeId> {
        self.expect
    }
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, RustlsError> {
        let id = certificate_id(end_entity).map_err(cert_error)?;
        let _ = self.seen.set(id);
        match self.expect {
            Some(expected) if expected != id => Err(RustlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        verify_ed25519_tls13(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server-side verifier of the client's certificate. Client authentication is mandatory.
#[derive(Debug)]
pub struct PeerClientVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PeerClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, RustlsError> {
        certificate_id(end_entity).map_err(cert_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        verify_ed25519_tls13(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Presents this node's certificate on both sides of a handshake.
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for SingleCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(&self, _client_hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn verify_ed25519_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, RustlsError> {
    if dss.scheme != SignatureScheme::ED25519 {
        // Ed25519 is the only scheme we advertise.
        return Err(RustlsError::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    // Also rejects a certificate whose key is not Ed25519 before any signature work.
    certificate_public_key(cert).map_err(cert_error)?;
    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
}

fn cert_error(e: CertificateIdError) -> RustlsError {
    RustlsError::InvalidCertificate(match e {
        CertificateIdError::Malformed => CertificateError::BadEncoding,
        CertificateIdError::NotEd25519 => CertificateError::Other(rustls::OtherError(Arc::new(e))),
    })
}

fn tls12_refused() -> RustlsError {
    RustlsError::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_id_matches_identity() {
        let ident = Identity::generate().unwrap();
        assert_eq!(certificate_id(ident.certificate()).unwrap(), ident.id());
        assert_eq!(
            &certificate_public_key(ident.certificate()).unwrap(),
            ident.public_key()
        );
    }

    #[test]
    fn non_ed25519_certificate_is_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            certificate_id(cert.der()),
            Err(CertificateIdError::NotEd25519)
        );
        assert_eq!(
            certificate_id(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])),
            Err(CertificateIdError::Malformed)
        );
    }

    #[test]
    fn configs_build() {
        let ctx = TlsContext::new(&Identity::generate().unwrap()).unwrap();
        let server = ctx.server_config().unwrap();
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        let (client, verifier) = ctx.client_config(Some(ctx.id())).unwrap();
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(verifier.expected(), Some(ctx.id()));
        assert_eq!(verifier.seen(), None);
    }
}
