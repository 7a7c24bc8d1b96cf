//! Redis over TLS with a private CA (and mutual TLS), and with an ACL user: the interface
//! and the workers connect end to end; a wrong password or CA stops a binary at start with
//! an error naming the flag, and the password never shows in logs or `--check`.
//!
//! Certificates are made here with rcgen (a CI machine may lack the openssl CLI).

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use switchyard_tests::python;
use switchyard_tests::redis_server::{RedisOptions, TlsFiles};
use switchyard_tests::stack::{Probe, PREFIX, REPLY_TIMEOUT};
use switchyard_tests::{binary, bounded, Incoming, Proc, Stack, INTERFACE_BIN, OPS_BIN, WORKER_BIN};

/// A CA and a certificate it signed, as PEM.
struct Issued {
    cert: String,
    key: String,
}

/// Writes `<name>-ca.pem`, a server certificate for localhost/127.0.0.1 and a client
/// certificate, all signed by a fresh CA, into `dir`.
fn make_certs(dir: &Path, name: &str) -> TlsFiles {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issue = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} {purpose:?}"));
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    };
    let server = issue(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = issue(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
    let write = |file: &str, text: &str| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    TlsFiles {
        ca: write("ca.pem", &ca.pem()),
        cert: write("server.pem", &server.cert),
        key: write("server.key", &server.key),
        client: Some((write("client.pem", &client.cert), write("client.key", &client.key))),
    }
}

async fn echo_round_trip(stack: &mut Stack, text: &str) {
    let mut c = stack.ws("/ws/echo/").await;
    c.send_text(text).await.unwrap();
    assert_eq!(c.recv(REPLY_TIMEOUT).await.unwrap(), Incoming::Text(text.into()));
}

/// The Python worker (`python -m switchyard runworker`) with the same Redis flags: it
/// replaces the Rust worker on `echo` and must answer through the interface.
async fn python_worker_serves_echo(stack: &mut Stack, text: &str) {
    stack.workers[0].sigterm();
    stack.workers[0]
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("Rust worker stops");
    stack.workers.clear();
    stack.spawn_python_worker(&["--only-channels", "echo"]);
    stack.wait_workers_live(Probe::Echo).await;
    echo_round_trip(stack, text).await;
}

/// Runs the Python worker with `args` until it exits (at most 30 s).
async fn run_python_to_exit(dir: &Path, args: &[String]) -> (Option<i32>, String) {
    let mut argv: Vec<String> = ["-m", "switchyard", "runworker"].map(String::from).to_vec();
    argv.extend(args.iter().cloned());
    argv.push(python::APPS.into());
    let env = [("PYTHONPATH".to_string(), python::python_path())];
    let mut proc = Proc::spawn("python-worker-exit", &python::python(), &argv, &env, dir).expect("spawn python");
    let status = proc.wait_exit(Duration::from_secs(30)).await;
    let log = proc.log();
    assert!(status.is_some(), "python worker still running after 30 s:\n{log}");
    (status.and_then(|s| s.code()), log)
}

/// Runs `program` with `args` until it exits (at most 30 s); returns its exit code and output.
async fn run_to_exit(dir: &Path, name: &str, program: &str, args: &[String]) -> (Option<i32>, String) {
    let mut proc = Proc::spawn(name, &binary(program), args, &[], dir).expect("spawn");
    let status = proc.wait_exit(Duration::from_secs(30)).await;
    let log = proc.log();
    assert!(
        status.is_some(),
        "{name} still running after 30 s (should have exited):\n{log}"
    );
    (status.and_then(|s| s.code()), log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    bounded(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let mut tls = make_certs(dir.path(), "tls");
        tls.client = None;
        let options = RedisOptions {
            tls: Some(tls),
            ..RedisOptions::default()
        };
        let mut stack = Stack::builder("redis-tls")
            .single_redis()
            .redis_options(options)
            .start()
            .await;
        assert!(stack.redis.url().starts_with("rediss://"));
        echo_round_trip(&mut stack, "over tls").await;

        // The ops command speaks TLS too.
        let mut args = stack.redis.client_args();
        args.extend(["--prefix".into(), PREFIX.into(), "status".into()]);
        let (code, log) = run_to_exit(stack.dir.path(), "ops-status", OPS_BIN, &args).await;
        assert_eq!(code, Some(0), "switchyard status over TLS:\n{log}");
        assert!(log.contains("echo"), "status lists the echo channel:\n{log}");

        // A CA that did not sign the server's certificate: refused at start, not retried.
        let other = make_certs(dir.path(), "other");
        let args = vec![
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--redis-url".into(),
            stack.redis.url(),
            "--redis-ca-file".into(),
            other.ca.display().to_string(),
        ];
        let (code, log) = run_to_exit(stack.dir.path(), "interface-wrong-ca", INTERFACE_BIN, &args).await;
        assert!(code.is_some_and(|c| c != 0), "exit code {code:?}:\n{log}");
        assert!(
            log.contains("--redis-ca-file") && log.contains("TLS"),
            "the error names the CA flag:\n{log}"
        );

        // A CA file with a redis:// URL is refused before anything starts.
        let args = vec![
            "--redis-url".into(),
            "redis://127.0.0.1:1/".into(),
            "--redis-ca-file".into(),
            other.ca.display().to_string(),
        ];
        let (code, log) = run_to_exit(stack.dir.path(), "worker-plain-url", WORKER_BIN, &args).await;
        assert_eq!(code, Some(2), "{log}");
        assert!(log.contains("--redis-ca-file: needs a rediss://"), "{log}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    bounded(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let tls = make_certs(dir.path(), "mtls");
        let options = RedisOptions {
            tls: Some(tls.clone()),
            ..RedisOptions::default()
        };
        let mut stack = Stack::builder("redis-mtls")
            .single_redis()
            .redis_options(options)
            .start()
            .await;
        assert!(stack.redis.client_args().iter().any(|a| a == "--redis-client-cert"));
        echo_round_trip(&mut stack, "over mutual tls").await;

        // Without a client certificate the server refuses the handshake: no start.
        let mut args = vec![
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--redis-url".into(),
            stack.redis.url(),
            "--redis-ca-file".into(),
            tls.ca.display().to_string(),
        ];
        let (code, log) = run_to_exit(stack.dir.path(), "interface-no-client-cert", INTERFACE_BIN, &args).await;
        assert!(code.is_some_and(|c| c != 0), "exit code {code:?}:\n{log}");
        assert!(log.contains("TLS with Redis failed"), "{log}");

        // Half the client pair is refused before anything starts.
        args = vec![
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--redis-url".into(),
            stack.redis.url(),
            "--redis-ca-file".into(),
            tls.ca.display().to_string(),
            "--redis-client-cert".into(),
            tls.client.as_ref().unwrap().0.display().to_string(),
        ];
        let (code, log) = run_to_exit(stack.dir.path(), "interface-half-mtls", INTERFACE_BIN, &args).await;
        assert_eq!(code, Some(2), "{log}");
        assert!(log.contains("--redis-client-cert: needs --redis-client-key"), "{log}");

        // The Python worker: the same refusals before start, then mutual TLS end to end.
        let (code, log) = run_python_to_exit(stack.dir.path(), &args[2..]).await;
        assert_eq!(code, Some(2), "{log}");
        assert!(log.contains("--redis-client-cert: needs --redis-client-key"), "{log}");
        let no_client_cert = vec![
            "--redis-url".into(),
            stack.redis.url(),
            "--redis-ca-file".into(),
            tls.ca.display().to_string(),
        ];
        let (code, log) = run_python_to_exit(stack.dir.path(), &no_client_cert).await;
        assert_eq!(code, Some(2), "{log}");
        assert!(log.contains("TLS with Redis failed"), "{log}");
        python_worker_serves_echo(&mut stack, "python over mutual tls").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_and_wrong_password() {
    bounded(Duration::from_secs(60), async {
        let password = "s3cret-Pw";
        let options = RedisOptions {
            user: Some(("sy".into(), password.into())),
            ..RedisOptions::default()
        };
        let mut stack = Stack::builder("redis-acl")
            .single_redis()
            .redis_options(options)
            .start()
            .await;
        echo_round_trip(&mut stack, "as sy").await;
        let log = stack.interface().log();
        assert!(
            log.contains("redis://sy:***@"),
            "start-up log names Redis, redacted:\n{log}"
        );
        assert!(!log.contains(password), "the password is in the interface log:\n{log}");
        assert!(
            !stack.workers[0].log().contains(password),
            "the password is in the worker log"
        );

        // --check hides it too.
        let args = vec!["--redis-url".into(), stack.redis.url(), "--check".into()];
        let (code, log) = run_to_exit(stack.dir.path(), "interface-check", INTERFACE_BIN, &args).await;
        assert_eq!(code, Some(0), "{log}");
        assert!(log.contains("sy:***@") && !log.contains(password), "{log}");

        // A wrong password (or none): both binaries exit at once, naming the flag.
        let port = stack.redis.single().port();
        for (url, what) in [
            (format!("redis://sy:wrong-Pw@127.0.0.1:{port}/"), "wrong"),
            (format!("redis://127.0.0.1:{port}/"), "none"),
        ] {
            let args = vec!["--bind".into(), "127.0.0.1:0".into(), "--redis-url".into(), url.clone()];
            let (code, log) = run_to_exit(stack.dir.path(), "interface-bad-auth", INTERFACE_BIN, &args).await;
            assert!(
                code.is_some_and(|c| c != 0),
                "interface, password {what}: {code:?}\n{log}"
            );
            assert!(
                log.contains("--redis-url (REDIS_URL)"),
                "interface, password {what}:\n{log}"
            );
            assert!(!log.contains("wrong-Pw"), "the wrong password is in the log:\n{log}");
            let args = vec!["--redis-url".into(), url];
            let (code, log) = run_to_exit(stack.dir.path(), "worker-bad-auth", WORKER_BIN, &args).await;
            assert!(code.is_some_and(|c| c != 0), "worker, password {what}: {code:?}\n{log}");
            assert!(
                log.contains("--redis-url (REDIS_URL)"),
                "worker, password {what}:\n{log}"
            );
            let (code, log) = run_python_to_exit(stack.dir.path(), &args).await;
            assert_eq!(code, Some(2), "python worker, password {what}:\n{log}");
            assert!(
                log.contains("--redis-url (REDIS_URL)"),
                "python worker, password {what}:\n{log}"
            );
            assert!(
                !log.contains("wrong-Pw"),
                "the wrong password is in the python worker's log:\n{log}"
            );
        }
        python_worker_serves_echo(&mut stack, "python as sy").await;
        assert!(
            !stack.workers[0].log().contains(password),
            "the password is in the python worker's log"
        );

        // An unreachable Redis is not fatal: the interface starts and waits for it.
        let args = vec![
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--redis-url".into(),
            "redis://sy:pw@127.0.0.1:1/".into(),
        ];
        let mut proc = Proc::spawn(
            "interface-no-redis",
            &binary(INTERFACE_BIN),
            &args,
            &[],
            stack.dir.path(),
        )
        .expect("spawn");
        assert!(
            proc.wait_exit(Duration::from_secs(6)).await.is_none(),
            "exited without Redis:\n{}",
            proc.log()
        );
        assert!(proc.log().contains("redis unreachable at start"), "{}", proc.log());
    })
    .await
}
