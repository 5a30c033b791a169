//! The `rust-node` binary's user-facing behaviour: one plain line and a non-zero status for
//! every user error, the TOML config, the private control socket, identity persistence, and a
//! clean exit on SIGTERM.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::procs::{Procs, Ran};

const WITHIN: Duration = Duration::from_secs(20);

/// Asserts a failure with exactly one line on stderr that contains `needle`.
fn one_line_failure(ran: &Ran, code: i32, needle: &str) {
    assert_eq!(ran.status.code(), Some(code), "{ran:?}");
    assert_eq!(ran.stderr.lines().count(), 1, "stderr: {:?}", ran.stderr);
    assert!(ran.stderr.starts_with("rust-node: "), "{:?}", ran.stderr);
    assert!(
        ran.stderr.contains(needle),
        "{:?} lacks {needle:?}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("panicked"), "{:?}", ran.stderr);
}

#[test]
fn usage_errors_are_one_line() {
    let mut procs = Procs::new("cli-usage");
    one_line_failure(&procs.run(&["run", "--bogus"], WITHIN), 2, "--bogus");
    one_line_failure(&procs.run(&[], WITHIN), 2, "missing command");
    one_line_failure(&procs.run(&["run", "--k", "many"], WITHIN), 2, "many");
    one_line_failure(&procs.run(&["discover", "svc"], WITHIN), 2, "--bootstrap");
    one_line_failure(&procs.run(&["run"], WITHIN), 1, "no listen address");
    one_line_failure(
        &procs.run(&["run", "--listen", "127.0.0.1:0", "--k", "0"], WITHIN),
        1,
        "k must be",
    );
    one_line_failure(
        &procs.run(&["run", "--listen", "nowhere"], WITHIN),
        1,
        "invalid address",
    );
    one_line_failure(
        &procs.run(
            &["run", "--listen", "127.0.0.1:0", "--advertise", "x"],
            WITHIN,
        ),
        1,
        "invalid advertisement",
    );
    let help = procs.run(&["--help"], WITHIN);
    assert!(help.status.success());
    assert!(help.stdout.contains("discover"));
}

#[test]
fn port_in_use_and_unreachable_bootstrap_are_one_line() {
    let mut procs = Procs::new("cli-net");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    one_line_failure(
        &procs.run(&["run", "--listen", &port], WITHIN),
        1,
        "Address already in use",
    );
    // Nobody answers on a port we hold without QUIC.
    let args = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--bootstrap",
        &port,
        "--request-timeout-ms",
        "300",
        "--require-bootstrap",
    ];
    one_line_failure(&procs.run(&args, WITHIN), 1, "no bootstrap node answered");
    let args = ["discover", "--bootstrap", &port, "svc", "--timeout", "5"];
    one_line_failure(&procs.run(&args, WITHIN), 1, "no bootstrap node answered");
    let args = ["discover", "--bootstrap", &port, "svc", "--timeout", "1"];
    one_line_failure(&procs.run(&args, WITHIN), 1, "no answer within 1s");
    let missing = procs.dir().join("missing.sock").display().to_string();
    one_line_failure(
        &procs.run(&["ctl", "--socket", &missing, "status"], WITHIN),
        1,
        "control socket",
    );
}

#[test]
fn config_file_with_flags_over_it() {
    let mut procs = Procs::new("cli-config");
    let bad = procs.dir().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\nlisen = 1\n").unwrap();
    let bad = bad.display().to_string();
    one_line_failure(&procs.run(&["run", "--config", &bad], WITHIN), 1, "line 2");
    let missing = procs.dir().join("none.toml").display().to_string();
    one_line_failure(
        &procs.run(&["run", "--config", &missing], WITHIN),
        1,
        "cannot read",
    );

    let good = procs.dir().join("node.toml");
    std::fs::write(
        &good,
        "k = 64\nalpha = 2\nadvertise = [\"from-file=https://file:1@60\"]\nlog = \"warn\"\n",
    )
    .unwrap();
    // The listen address and control socket come from flags (`start_node`), the rest from
    // the file; `--k` overrides the file's k.
    let node = procs.start_node(
        "configured",
        &[
            "--config".into(),
            good.display().to_string(),
            "--k".into(),
            "8".into(),
        ],
    );
    let socket = node.ctl.display().to_string();
    let status = procs.run(&["ctl", "--socket", &socket, "status", "--json"], WITHIN);
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(status["adverts"], serde_json::json!(["from-file"]));
    assert_eq!(status["records"], 1);
}

#[test]
fn control_socket_is_private_and_sigterm_exits_cleanly() {
    let mut procs = Procs::new("cli-ctl");
    let identity = procs.dir().join("key.pem");
    let args = ["--identity".to_string(), identity.display().to_string()];
    let node = procs.start_node("private", &args);
    let mode = std::fs::metadata(&node.ctl).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let socket = node.ctl.display().to_string();
    let ran = procs.run(
        &[
            "ctl",
            "--socket",
            &socket,
            "advertise",
            "svc",
            "https://svc:1",
            "--meta",
            "zone=eu",
        ],
        WITHIN,
    );
    assert!(ran.status.success(), "{ran:?}");
    let addr = node.addr.to_string();
    let found = procs.run(&["discover", "--bootstrap", &addr, "svc"], WITHIN);
    assert!(found.status.success(), "{found:?}");
    assert!(
        found.stdout.contains("endpoint=https://svc:1"),
        "{}",
        found.stdout
    );
    assert!(
        found.stdout.contains(r#"metadata={"zone":"eu"}"#),
        "{}",
        found.stdout
    );
    assert!(found.stdout.contains(&format!("node_id={}", node.id)));
    let bad = procs.run(
        &[
            "ctl",
            "--socket",
            &socket,
            "advertise",
            "svc",
            "e",
            "--meta",
            "novalue",
        ],
        WITHIN,
    );
    assert_eq!(bad.status.code(), Some(1));

    // A second node on the same control socket path is refused, and the first keeps it.
    let twin = procs.run(
        &["run", "--listen", "127.0.0.1:0", "--ctl", &socket],
        WITHIN,
    );
    one_line_failure(&twin, 1, "in use by a running node");
    assert!(node.ctl.exists());

    let status = procs.terminate(node.pid, Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "clean exit on SIGTERM"
    );
    assert!(!node.ctl.exists(), "the socket file is removed on shutdown");

    // Same identity file, same id; the stale socket path is reusable.
    let again = procs.start_node("private", &args);
    assert_eq!(again.id, node.id);
}

#[test]
fn ctl_discover_asks_the_running_node() {
    let mut procs = Procs::new("cli-ctl-discover");
    let first = procs.start_node("first", &[]);
    let bootstrap = ["--bootstrap".to_string(), first.addr.to_string()];
    let second = procs.start_node("second", &bootstrap);
    let (first_ctl, second_ctl) = (
        first.ctl.display().to_string(),
        second.ctl.display().to_string(),
    );
    let advertised = procs.run(
        &[
            "ctl",
            "--socket",
            &first_ctl,
            "advertise",
            "calc",
            "https://calc:1",
        ],
        WITHIN,
    );
    assert!(advertised.status.success(), "{advertised:?}");
    let found = procs.run(
        &["ctl", "--socket", &second_ctl, "discover", "calc", "--json"],
        WITHIN,
    );
    assert!(found.status.success(), "{found:?}");
    let list: serde_json::Value = serde_json::from_str(found.stdout.trim()).unwrap();
    assert_eq!(list[0]["node_id"], serde_json::json!(first.id));
    assert_eq!(list[0]["endpoint"], "https://calc:1");
    let missing = procs.run(
        &["ctl", "--socket", &second_ctl, "discover", "nothing"],
        WITHIN,
    );
    one_line_failure(&missing, 1, "no provider of nothing found");
}
