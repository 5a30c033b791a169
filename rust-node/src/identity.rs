//! A node's identity: an Ed25519 key pair, the self-signed certificate made from it, and the
//! node id derived from its public key.
//!
//! This module exists because identity is what every other node checks. The rule, used by every
//! node to verify a peer, is:
//!
//! > **node id = SHA-256(raw 32-byte Ed25519 public key)**
//!
//! "Raw" means the 32 bytes of the key itself (RFC 8032 encoding), i.e. the contents of the
//! `subjectPublicKey` BIT STRING of the certificate's SubjectPublicKeyInfo, not the DER SPKI.
//! The 32-byte digest is used as the id as is (it is *not* passed through
//! `NodeId::normalize`, which would also keep 32 bytes as they are; the point is that nothing
//! re-hashes it).
//!
//! Only the private key is persisted (PKCS#8 PEM, file mode 0600). The certificate is re-derived
//! from the key on every load, so its serial number and validity dates may differ between runs;
//! peers never look at them, only at the key.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use macula_dht::NodeId;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ED25519};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// Length of a raw Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Subject alternative name put in every node certificate. Peers ignore it (they check the key),
/// it only makes certificates recognisable in captures and logs.
pub const CERT_NAME: &str = "macula-dht";

/// The id rule shared by every node: SHA-256 of the raw 32-byte Ed25519 public key.
pub fn node_id_from_public_key(public_key: &[u8; PUBLIC_KEY_LEN]) -> NodeId {
    NodeId(Sha256::digest(public_key).into())
}

/// Lowercase hex of an id, for logs and error messages.
pub fn id_hex(id: &NodeId) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(id.0.len() * 2);
    for b in id.0 {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// A node's key pair and certificate.
#[derive(Clone)]
pub struct Identity {
    /// PKCS#8 v2 DER of the Ed25519 key pair (private and public key).
    key_pkcs8: Vec<u8>,
    cert: CertificateDer<'static>,
    public_key: [u8; PUBLIC_KEY_LEN],
    id: NodeId,
}

/// Why an identity could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file exists but does not hold a PKCS#8 PEM Ed25519 private key.
    #[error("identity file {path} is corrupt: {reason}")]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its contents, for humans.
        reason: String,
    },
    /// A PEM string handed to [`Identity::from_pkcs8_pem`] is not a PKCS#8 Ed25519 key.
    #[error("invalid identity key: {reason}")]
    InvalidKey {
        /// What is wrong with the key, for humans.
        reason: String,
    },
    /// Reading or writing the key file failed.
    #[error("identity file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The operating system's error, also for creating the file's directory or temporary
        /// copy; `NotFound` when [`Identity::load`] finds no file.
        source: io::Error,
    },
    /// Key generation or certificate creation failed inside the crypto library.
    #[error("cannot create identity: {reason}")]
    Crypto {
        /// The crypto library's message.
        reason: String,
    },
}

impl Identity {
    /// A fresh random identity (not persisted).
    pub fn generate() -> Result<Identity, IdentityError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|e| IdentityError::Crypto {
            reason: e.to_string(),
        })?;
        Identity::from_key_pair(&key)
    }

    /// Loads the identity whose private key is stored at `path`, or creates one there if the file
    /// does not exist.
    ///
    /// A new file is written with mode 0600 (through a temporary file and a no-clobber hard link,
    /// so a concurrent creator or a crash never leaves a half-written key; if another process
    /// created the file first, its key wins). Missing parent directories are created. A file that
    /// exists but holds anything other than a PKCS#8 PEM Ed25519 key gives
    /// [`IdentityError::Corrupt`]; it is never overwritten.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Identity, IdentityError> {
        let path = path.as_ref();
        match Identity::load(path) {
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let identity = Identity::generate()?;
        match write_new_private(path, identity.private_key_pem().as_bytes()) {
            Ok(()) => {
                tracing::info!(path = %path.display(), id = %id_hex(&identity.id), "created node identity");
                Ok(identity)
            }
            // Someone else created it between our read and our link: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Identity::load(path),
            Err(source) => Err(IdentityError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Loads an existing key file; a missing file is an [`IdentityError::Io`] with `NotFound`.
    pub fn load(path: impl AsRef<Path>) -> Result<Identity, IdentityError> {
        let path = path.as_ref();
        let io_err = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = std::fs::read(path).map_err(io_err)?;
        warn_if_readable_by_others(path);
        let pem = std::str::from_utf8(&bytes).map_err(|_| IdentityError::Corrupt {
            path: path.to_owned(),
            reason: "not UTF-8 text".into(),
        })?;
        Identity::from_pkcs8_pem(pem).map_err(|e| match e {
            IdentityError::InvalidKey { reason } => IdentityError::Corrupt {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Parses a PKCS#8 PEM Ed25519 private key (the format written by [`Identity::load_or_create`]
    /// and returned by [`Identity::private_key_pem`]).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Identity, IdentityError> {
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(pem, &PKCS_ED25519).map_err(|e| {
            IdentityError::InvalidKey {
                reason: format!("not a PKCS#8 PEM Ed25519 private key ({e})"),
            }
        })?;
        Identity::from_key_pair(&key)
    }

    /// The node id: SHA-256 of the raw Ed25519 public key.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.public_key
    }

    /// The self-signed X.509 certificate (DER) presented in TLS handshakes.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The key as the engine signs records with it: records this node publishes carry its
    /// public key as their publisher.
    pub fn keypair(&self) -> Result<macula_dht::seal::Keypair, IdentityError> {
        macula_dht::seal::Keypair::from_pkcs8(&self.key_pkcs8).map_err(|e| {
            IdentityError::InvalidKey {
                reason: e.to_string(),
            }
        })
    }

    /// The private key as rustls wants it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// The private key as PKCS#8 PEM (what the key file holds). Secret material: handle with care.
    pub fn private_key_pem(&self) -> String {
        const LINE: usize = 64;
        let b64 = base64_encode(&self.key_pkcs8);
        let mut pem = String::with_capacity(b64.len() + b64.len() / LINE + 64);
        pem.push_str("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(LINE) {
            // base64 output is ASCII, so every chunk is valid UTF-8.
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    /// A secret derived from the private key for `purpose`, stable across restarts. The transport
    /// derives its QUIC stateless-reset key and connection-id key from it, so a node restarted
    /// with the same identity recognises its old connection ids and resets its peers' stale
    /// connections (they redial at once instead of timing out).
    pub(crate) fn derived_secret(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"macula-dht/1 derived secret\0");
        h.update(purpose.as_bytes());
        h.update(b"\0");
        h.update(&self.key_pkcs8);
        h.finalize().into()
    }

    fn from_key_pair(key: &KeyPair) -> Result<Identity, IdentityError> {
        let public_key: [u8; PUBLIC_KEY_LEN] =
            key.public_key_raw()
                .try_into()
                .map_err(|_| IdentityError::InvalidKey {
                    reason: format!(
                        "Ed25519 public key has {} bytes, expected {PUBLIC_KEY_LEN}",
                        key.public_key_raw().len()
                    ),
                })?;
        let id = node_id_from_public_key(&public_key);
        let crypto = |e: rcgen::Error| IdentityError::Crypto {
            reason: e.to_string(),
        };
        let mut params = CertificateParams::new(vec![CERT_NAME.to_owned()]).map_err(crypto)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{CERT_NAME} {}", id_hex(&id)));
        params.distinguished_name = dn;
        let cert = params.self_signed(key).map_err(crypto)?;
        Ok(Identity {
            key_pkcs8: key.serialize_der(),
            cert: cert.der().clone(),
            public_key,
            id,
        })
    }
}

impl fmt::Debug for Identity {
    // Never print the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &id_hex(&self.id))
            .finish_non_exhaustive()
    }
}

/// Writes `contents` to a new file at `path` with mode 0600, failing with `AlreadyExists` if the
/// file appeared in the meantime. The data is written and synced to a temporary file first and
/// then hard-linked into place, which is atomic and never clobbers.
fn write_new_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}-{nanos}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);

    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    // The temporary name is only a staging area: remove it whatever happened.
    let _ = std::fs::remove_file(&tmp);
    result
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
                    "identity key file is accessible by group or others; expected mode 0600");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Standard base64 with padding (RFC 4648), enough for PEM; avoids a dependency.
fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        // `chunks` never yields an empty slice, so `chunk[0]` exists.
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir()
            .join(format!(
                "macula-identity-test-{}-{nanos}",
                std::process::id()
            ))
            .join(name)
    }

    #[test]
    fn id_is_sha256_of_raw_public_key() {
        let ident = Identity::generate().unwrap();
        let expected: [u8; 32] = Sha256::digest(ident.public_key()).into();
        assert_eq!(ident.id(), NodeId(expected));
    }

    #[test]
    fn two_identities_differ() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        assert_ne!(a.id(), b.id());
        assert_ne!(a.public_key(), b.public_key());
    }

    #[test]
    fn pem_round_trip_keeps_id() {
        let a = Identity::generate().unwrap();
        let b = Identity::from_pkcs8_pem(&a.private_key_pem()).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.derived_secret("x"), b.derived_secret("x"));
        assert_ne!(a.derived_secret("x"), a.derived_secret("y"));
    }

    #[test]
    fn pem_matches_rcgen_encoding() {
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let ident = Identity::from_key_pair(&key).unwrap();
        assert_eq!(ident.private_key_pem().trim(), key.serialize_pem().trim());
    }

    #[test]
    fn id_survives_save_and_load() {
        let path = temp_path("node.key");
        let created = Identity::load_or_create(&path).unwrap();
        let loaded = Identity::load_or_create(&path).unwrap();
        assert_eq!(created.id(), loaded.id());
        assert_eq!(Identity::load(&path).unwrap().id(), created.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let dir = path.parent().unwrap();
        // Only the key file is left behind (no temporary file).
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_file_is_a_typed_error() {
        let path = temp_path("corrupt.key");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for contents in [
            &b"not a key at all"[..],
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            b"\xff\xfe\x00garbage",
            b"",
        ] {
            std::fs::write(&path, contents).unwrap();
            match Identity::load_or_create(&path) {
                Err(IdentityError::Corrupt { path: p, reason }) => {
                    assert_eq!(p, path);
                    assert!(!reason.is_empty());
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
            // Never overwritten.
            assert_eq!(std::fs::read(&path).unwrap(), contents);
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn non_ed25519_key_is_rejected() {
        let p256 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(
            Identity::from_pkcs8_pem(&p256.serialize_pem()),
            Err(IdentityError::InvalidKey { .. })
        ));
    }

    #[test]
    fn base64_vectors() {
        for (input, out) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input), out);
        }
    }
}
