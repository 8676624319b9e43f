//! HTTP and HTTPS on the one API port, over real sockets: the router served by
//! `http::serve` on loopback (the fixture's appliance), and the `cosm-appliance` binary
//! itself for what only it does (the startup log line, the exit on a bad setting). curl
//! (Debian package curl) is the client, as an operator's would be.

use crate::common::TestApp;
use axum::routing::get;
use axum::Router;
use cosm_appliance::api_tls::{self, ApiCert};
use cosm_appliance::http::Transport;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A router served by `http::serve` with HTTPS on a loopback port; stopped on drop.
struct Listening {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Listening {
    async fn start(
        router: Router,
        limits: cosm_appliance::config::HttpLimits,
        cert: &ApiCert,
    ) -> Listening {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(cosm_appliance::http::serve(
            listener,
            router,
            limits,
            Some(cert.server_config.clone()),
            async move {
                let _ = stopped.await;
            },
        ));
        Listening {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Signals shutdown and waits for `serve` to return: how long that took.
    async fn shut_down(mut self) -> Duration {
        let start = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("serve did not return within 30 s of its shutdown")
            .unwrap()
            .unwrap();
        start.elapsed()
    }

    /// The fixture's appliance with more `[api]` keys, and the certificate it serves.
    async fn appliance(api: &str) -> (TestApp, ApiCert, Listening) {
        let app = TestApp::with_api(api).await;
        let cert = api_tls::load_or_create(&app.config).unwrap();
        let served = Listening::start(app.router.clone(), app.config.http_limits, &cert).await;
        (app, cert, served)
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// curl with `args`, asynchronously (the server runs on this test's runtime): its status,
/// stdout and stderr.
async fn curl(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-m", "10"])
        .args(args)
        .output()
        .await
        .expect("cannot run curl (Debian package curl; `make deps` installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The SHA-256 fingerprint of the certificate curl was shown at `url` (`-w %{certs}`
/// prints the chain as PEM).
async fn fingerprint_curl_sees(url: &str) -> String {
    let (ok, out, err) = curl(&["-k", "-o", "/dev/null", "-w", "%{certs}", url]).await;
    assert!(ok, "curl {url}: {err}");
    let der = CertificateDer::from_pem_slice(out.as_bytes())
        .unwrap_or_else(|e| panic!("no certificate in curl's output ({e}): {out}"));
    api_tls::fingerprint(&der)
}

#[tokio::test]
async fn one_port_answers_http_and_https() {
    let (_app, cert, served) = Listening::appliance("").await;
    let addr = served.addr;
    let (ok, body, err) = curl(&[&format!("http://{addr}/healthz")]).await;
    assert!(
        ok && body.contains("\"status\":\"ok\""),
        "http: {body}{err}"
    );
    let (ok, body, err) = curl(&["-k", &format!("https://{addr}/healthz")]).await;
    assert!(
        ok && body.contains("\"status\":\"ok\""),
        "https: {body}{err}"
    );
    // HTTP/1.1 over TLS too (curl prefers HTTP/2 through ALPN).
    let (ok, body, err) = curl(&["-k", "--http1.1", &format!("https://{addr}/healthz")]).await;
    assert!(
        ok && body.contains("\"status\":\"ok\""),
        "https/1.1: {body}{err}"
    );
    assert!(cert.self_signed && cert.created);
    assert_eq!(
        fingerprint_curl_sees(&format!("https://{addr}/healthz")).await,
        cert.fingerprint
    );
    // Verified, not only accepted with -k: the certificate names the loopback address.
    let pem = cert.cert_file.to_str().unwrap();
    let (ok, _, err) = curl(&["--cacert", pem, &format!("https://{addr}/healthz")]).await;
    assert!(
        ok,
        "the self-signed certificate does not verify for {addr}: {err}"
    );
}

#[tokio::test]
async fn handlers_see_whether_a_request_came_over_tls() {
    let app = TestApp::new().await;
    let cert = api_tls::load_or_create(&app.config).unwrap();
    let router = Router::new().route(
        "/transport",
        get(|t: Transport| async move { format!("{t:?} {}", t.is_tls()) }),
    );
    let served = Listening::start(router.clone(), app.config.http_limits, &cert).await;
    let addr = served.addr;
    let (_, plain, _) = curl(&[&format!("http://{addr}/transport")]).await;
    assert_eq!(plain, "Plain false");
    let (_, tls, _) = curl(&["-k", &format!("https://{addr}/transport")]).await;
    assert_eq!(tls, "Tls true");
    // Without `serve` (a router driven directly) a request counts as plain.
    use tower::ServiceExt;
    let resp = router
        .oneshot(
            axum::http::Request::get("/transport")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"Plain false");
}

#[tokio::test]
async fn a_given_certificate_and_key_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let params = rcgen::CertificateParams::new(vec!["cosm.example".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let given = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("site.crt"), dir.path().join("site.key"));
    std::fs::write(&cert_path, given.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let (app, cert, served) = Listening::appliance(&format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        cert_path.to_str().unwrap(),
        key_path.to_str().unwrap()
    ))
    .await;
    assert!(!cert.self_signed);
    assert_eq!(cert.fingerprint, api_tls::fingerprint(given.der()));
    let port = served.addr.port();
    let url = format!("https://cosm.example:{port}/healthz");
    let resolve = format!("cosm.example:{port}:127.0.0.1");
    // Verified against the given certificate alone, under the name it was made for.
    let (ok, body, err) = curl(&[
        "--resolve",
        &resolve,
        "--cacert",
        cert_path.to_str().unwrap(),
        &url,
    ])
    .await;
    assert!(ok && body.contains("\"status\":\"ok\""), "{body}{err}");
    let seen = fingerprint_curl_sees(&format!("https://{}/healthz", served.addr)).await;
    assert_eq!(seen, api_tls::fingerprint(given.der()));
    assert!(
        !app.config.data_dir.join(api_tls::SELF_SIGNED_CERT).exists(),
        "no self-signed certificate is made when one is given"
    );
}

#[tokio::test]
async fn a_bad_key_path_names_the_key_and_the_file() {
    let app = TestApp::with_api("tls_cert = \"site.crt\"\ntls_key = \"nowhere/site.key\"").await;
    let e = anyhow::Error::from(api_tls::load_or_create(&app.config).unwrap_err());
    let text = format!("{e:#}");
    let key_file = app.config.data_dir.join("nowhere/site.key");
    // The certificate is read first: its file is missing too.
    assert!(
        text.contains("appliance.toml: key `api.tls_cert`: cannot read")
            && text.contains("site.crt"),
        "{text}"
    );
    std::fs::write(
        app.config.data_dir.join("site.crt"),
        rcgen::generate_simple_self_signed(vec!["x".to_string()])
            .unwrap()
            .cert
            .pem(),
    )
    .unwrap();
    let e = anyhow::Error::from(api_tls::load_or_create(&app.config).unwrap_err());
    let text = format!("{e:#}");
    assert!(
        text.contains("appliance.toml: key `api.tls_key`: cannot read")
            && text.contains(&key_file.display().to_string())
            && text.contains("No such file or directory"),
        "{text}"
    );
}

/// Reads from `stream` until the server closes it (EOF or a reset), writing one byte of
/// `trickle` every 300 ms meanwhile; how long that took, or `None` past `limit`.
async fn closed_within(
    stream: &mut TcpStream,
    mut trickle: &[u8],
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    tick.tick().await;
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(start.elapsed()),
                Ok(_) => {}
            },
            _ = tick.tick(), if !trickle.is_empty() => {
                if stream.write_all(&trickle[..1]).await.is_err() {
                    return Some(start.elapsed());
                }
                trickle = &trickle[1..];
            }
            () = tokio::time::sleep(limit.saturating_sub(start.elapsed())) => return None,
        }
    }
}

/// A TLS record header announcing a 512-byte handshake message, and the start of a
/// ClientHello: a client that stops (or trickles) in the middle of its handshake.
const PARTIAL_CLIENT_HELLO: [u8; 9] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];

#[tokio::test]
async fn silent_and_half_finished_handshakes_are_closed_after_the_idle_timeout() {
    let (_app, _cert, served) = Listening::appliance("idle_timeout_secs = 1").await;
    let addr = served.addr;
    let limit = Duration::from_secs(10);

    // Connected, and nothing sent.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let took = closed_within(&mut silent, &[], limit)
        .await
        .expect("a silent connection was still open after 10 s");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "a silent connection was closed after {took:?} (idle timeout 1 s)"
    );

    // The start of a ClientHello, then nothing.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(&PARTIAL_CLIENT_HELLO).await.unwrap();
    let took = closed_within(&mut half, &[], limit)
        .await
        .expect("a half-sent ClientHello was still open after 10 s");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "a half-sent ClientHello was closed after {took:?} (idle timeout 1 s)"
    );

    // A ClientHello trickled a byte every 300 ms: never idle for 1 s, but the handshake
    // as a whole must still finish within the idle timeout.
    let mut trickling = TcpStream::connect(addr).await.unwrap();
    let mut bytes = PARTIAL_CLIENT_HELLO.to_vec();
    bytes.resize(40, 0);
    let took = closed_within(&mut trickling, &bytes, limit)
        .await
        .expect("a trickled ClientHello was still open after 10 s");
    assert!(
        took < Duration::from_secs(4),
        "a trickled ClientHello was closed only after {took:?} (idle timeout 1 s)"
    );

    // And the port still answers both ways.
    let (ok, _, err) = curl(&["-k", &format!("https://{addr}/healthz")]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = curl(&[&format!("http://{addr}/healthz")]).await;
    assert!(ok, "{err}");
}

#[tokio::test]
async fn connections_before_their_handshake_do_not_hold_up_shutdown() {
    let (_app, _cert, served) = Listening::appliance("idle_timeout_secs = 60").await;
    let _silent = TcpStream::connect(served.addr).await.unwrap();
    let mut half = TcpStream::connect(served.addr).await.unwrap();
    half.write_all(&PARTIAL_CLIENT_HELLO).await.unwrap();
    // Both accepted and waiting (a request answered after them shows they were taken).
    let (ok, _, err) = curl(&[&format!("http://{}/healthz", served.addr)]).await;
    assert!(ok, "{err}");
    let took = served.shut_down().await;
    assert!(
        took < Duration::from_secs(3),
        "shutdown waited {took:?} for connections that never finished a handshake"
    );
}

/// `cosm-appliance serve` itself: a child process killed when the test ends.
struct Daemon {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_cosm-appliance");

fn write_config(dir: &std::path::Path, api: &str) -> std::path::PathBuf {
    let path = dir.join("appliance.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n{api}\n[boot]\nipxe_dir = \"none\"\nramdisk_dir = \"none\"\nagent_dir = \"none\"\nappliance_url = \"http://127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    path
}

impl Daemon {
    fn start(config: &std::path::Path) -> Daemon {
        use std::io::BufRead;
        let mut child = std::process::Command::new(BIN)
            .args(["serve", "--log-format", "json", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Daemon { child, lines }
    }

    /// Waits for "HTTP API listening": the address, and the fingerprint the log showed.
    fn listening(&self) -> (String, String) {
        let mut fingerprint = None;
        loop {
            let v = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the appliance did not start listening within 30 s");
            let message = v["message"].as_str().unwrap_or_default();
            if let Some(fp) = message.strip_prefix(
                "HTTPS on the API port: self-signed certificate, SHA-256 fingerprint ",
            ) {
                fingerprint = Some(fp.to_string());
            }
            if message == "HTTP API listening" {
                let addr = v["addr"].as_str().unwrap().to_string();
                return (addr, fingerprint.expect("no HTTPS line before listening"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_logs_the_fingerprint_curl_sees_and_keeps_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let logged = {
        let daemon = Daemon::start(&config);
        let (addr, logged) = daemon.listening();
        let seen = fingerprint_curl_sees(&format!("https://{addr}/healthz")).await;
        assert_eq!(
            seen, logged,
            "curl saw another certificate than the log names"
        );
        let (ok, body, err) = curl(&[&format!("http://{addr}/healthz")]).await;
        assert!(ok && body.contains("\"status\":\"ok\""), "{body}{err}");
        logged
    };
    // The second start reuses the certificate.
    let daemon = Daemon::start(&config);
    let (again, fingerprint) = daemon.listening();
    assert_eq!(fingerprint, logged, "the certificate changed at a restart");
    assert_eq!(
        fingerprint_curl_sees(&format!("https://{again}/healthz")).await,
        logged
    );
    drop(daemon);
    // check-config names it too.
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&logged), "{text}");
}

#[test]
fn the_daemon_refuses_a_bad_key_path_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
    std::fs::write(dir.path().join("data/site.crt"), certified.cert.pem()).unwrap();
    let config = write_config(
        dir.path(),
        "tls_cert = \"site.crt\"\ntls_key = \"/nonexistent/site.key\"",
    );
    for command in ["serve", "check-config"] {
        let out = std::process::Command::new(BIN)
            .args([command, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains("error: ")
                && stderr.contains("appliance.toml: key `api.tls_key`: cannot read /nonexistent/site.key: No such file or directory"),
            "{command}: {stderr}"
        );
    }
    assert!(
        !dir.path().join("data/cosm.redb").exists(),
        "the store was opened before the certificate was checked"
    );
}
