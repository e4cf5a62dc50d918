//! The `stream-rpc` command as a real process, against a real server (its
//! own `serve`) on a free loopback port, and a real Redis for `queue`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use stream_rpc::{Cipher, Fernet};
use stream_rpc_test_support::{Process, RedisServer, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_stream-rpc");

fn new_key() -> String {
    Fernet::generate_key().unwrap()
}

/// Runs the command to its end with `key` in CRYPTO_KEY and `stdin`.
fn run(key: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("CRYPTO_KEY", key)
        .env_remove("STREAM_RPC_QUEUE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `stream-rpc serve` on a free port; killed when dropped.
struct Serving {
    process: Process,
    addr: String,
}

impl Serving {
    fn start(key: &str, extra: &[&str]) -> Serving {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .env("CRYPTO_KEY", key);
        let mut process = Process::spawn("stream-rpc serve", command);
        let addr = format!("127.0.0.1:{}", process.serving_port());
        Serving { process, addr }
    }

    /// Waits (bounded) for a line of its output holding `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        self.process
            .wait_for(&format!("{needle:?}"), |line| line.contains(needle))
    }
}

#[test]
fn keygen_prints_a_usable_key() {
    let out = run("", &["keygen"], "");
    assert!(out.status.success());
    let key = text(&out.stdout);
    assert_eq!(key.trim().len(), 44);
    Fernet::new(key.trim()).unwrap();
}

#[test]
fn call_prints_the_answer_and_exits_by_outcome() {
    let key = new_key();
    let server = Serving::start(&key, &[]);
    let addr = server.addr.as_str();

    let out = run(&key, &["call", "ping", "--addr", addr], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "null");
    // Metadata within the limits travels with the call.
    let out = run(
        &key,
        &["call", "ping", "--addr", addr, "--meta", "tenant=acme"],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A payload from stdin, from a file, and the whole packet.
    let task = r#"{"peer":"3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41","id":4,"created_at":"2026-12-01T00:00:00Z","method":"parse_article","payload":{"article_id":7}}"#;
    let out = run(&key, &["call", "put_in_queue", "-", "--addr", addr], task);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer, serde_json::json!({"queued": true}));
    let file =
        std::env::temp_dir().join(format!("stream-rpc-cli-task-{}.json", std::process::id()));
    std::fs::write(&file, task).unwrap();
    let at_file = format!("@{}", file.display());
    let out = run(
        &key,
        &["call", "put_in_queue", &at_file, "--addr", addr, "--packet"],
        "",
    );
    std::fs::remove_file(&file).unwrap();
    let packet: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(packet["method"], "pong");
    assert_eq!(
        packet["payload"],
        serde_json::json!({"queued": false, "reason": "duplicate"})
    );
    assert!(packet["reply_to"]["id"].is_u64(), "{packet}");

    // An error packet: its code and message on stderr, exit 1.
    let out = run(&key, &["call", "no_such_method", "--addr", addr], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown_method"),
        "{}",
        text(&out.stderr)
    );

    // Another key: no answer, a hint, exit 2.
    let out = run(
        &new_key(),
        &["call", "ping", "--addr", addr, "--timeout", "1"],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("check the key"),
        "{}",
        text(&out.stderr)
    );

    // Nobody listening, a payload that is not JSON, a bad address: exit 2.
    let nobody = format!("127.0.0.1:{}", free_port());
    for args in [
        vec!["call", "ping", "--addr", nobody.as_str()],
        vec!["call", "ping", "{not json", "--addr", addr],
        vec!["call", "ping", "--addr", "no-port"],
        // Metadata that is no KEY=VALUE, or breaks the protocol's limits.
        vec!["call", "ping", "--addr", addr, "--meta", "tenant"],
        vec!["call", "ping", "--addr", addr, "--meta", "Tenant=acme"],
    ] {
        let out = run(&key, &args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).starts_with("error: "),
            "{}",
            text(&out.stderr)
        );
    }

    // A notification: sent, nothing awaited.
    let out = run(&key, &["call", "ping", "--addr", addr, "--notify"], "");
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
}

#[test]
fn the_key_comes_from_a_file_and_is_never_printed() {
    let key = new_key();
    let server = Serving::start(&key, &[]);
    let path: PathBuf =
        std::env::temp_dir().join(format!("stream-rpc-cli-key-{}", std::process::id()));
    std::fs::write(&path, format!("{key}\n")).unwrap();
    let file = path.to_str().unwrap();
    let out = run(
        "",
        &["--key-file", file, "call", "ping", "--addr", &server.addr],
        "",
    );
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run("", &["--key-file", "/nonexistent/key", "call", "ping"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/key"));
    assert!(!text(&out.stderr).contains(&key));
}

#[test]
fn decode_opens_what_it_can_and_says_why_not() {
    let key = new_key();
    let fernet = Fernet::new(&key).unwrap();
    let packet = stream_rpc::Packet::new(uuid::Uuid::new_v4(), 9, "ping", serde_json::json!("hi"));
    let good = String::from_utf8(fernet.encrypt(&packet.to_json().unwrap()).unwrap()).unwrap();
    let foreign =
        String::from_utf8(Fernet::new(&new_key()).unwrap().encrypt(b"{}").unwrap()).unwrap();
    // The Fernet specification's token of 1985, under its own key.
    let old_key = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
    let old = "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA==";

    let stdin = format!("{good}\nnot-a-token\n{foreign}\n\n{good}\n");
    let out = run(&key, &["decode"], &stdin);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.matches("\"token_time\"").count(), 2, "{stdout}");
    assert!(stdout.contains("\"method\": \"ping\""), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("malformed"), "{stderr}");
    assert!(stderr.contains("wrong key"), "{stderr}");
    assert!(!stderr.contains(&key));

    let out = run(old_key, &["decode", old], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("expired"),
        "{}",
        text(&out.stderr)
    );
    let out = run(old_key, &["decode", "--no-ttl", old], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["packet"], "hello");
    assert_eq!(shown["token_time"], "1985-10-26T08:20:00+00:00");
}

#[test]
fn serve_shares_replay_protection_when_the_queue_is_on_redis() {
    let redis = RedisServer::start();
    let key = new_key();
    let url = redis.url();
    let mut a = Serving::start(&key, &["--queue", &url]);
    let mut b = Serving::start(&key, &["--queue", &url]);
    for server in [&mut a, &mut b] {
        server.wait_for("replay protection is shared through the queue's Redis");
    }
    // A ping answered by A, played verbatim to B: refused there.
    let fernet = Fernet::new(&key).unwrap();
    let packet = stream_rpc::Packet::new(uuid::Uuid::new_v4(), 1, "ping", serde_json::json!(1));
    let mut line = fernet.encrypt(&packet.to_json().unwrap()).unwrap();
    line.push(b'\n');
    let to_a = std::net::TcpStream::connect(&a.addr).unwrap();
    (&to_a).write_all(&line).unwrap();
    let mut reply = String::new();
    BufReader::new(&to_a).read_line(&mut reply).unwrap();
    assert!(fernet.decrypt(reply.trim().as_bytes()).is_ok(), "{reply:?}");
    let to_b = std::net::TcpStream::connect(&b.addr).unwrap();
    (&to_b).write_all(&line).unwrap();
    b.wait_for("dropped a replayed token (accepted before)");
    // `--replay local` turns it off, with a warning; a bad value is refused.
    let mut local = Serving::start(&key, &["--queue", &url, "--replay", "local"]);
    local.wait_for("STREAM_RPC_REPLAY=local: replay protection is this server's alone");
    let out = run(&key, &["serve", "--port", "0", "--replay", "off"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("STREAM_RPC_REPLAY"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn decode_never_panics_whatever_it_is_given() {
    let key = new_key();
    // Byte 16 falls inside a character; then control characters, a
    // token made of one multi-byte character, and one of many.
    let tokens = [
        "aéééééééééééééé",
        "gAAAAA\u{1b}[31m\u{7}ééééééééé",
        "€",
        &"日本".repeat(40),
    ];
    let mut args = vec!["decode"];
    args.extend(tokens);
    let out = run(&key, &args, "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.matches("does not open").count(), 4, "{stderr}");
    assert!(stderr.contains(&format!("{}…", tokens[0])), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "control characters are escaped: {stderr}"
    );
    // The same on stdin, with lines that are not UTF-8 at all.
    let mut child = Command::new(BIN)
        .args(["decode"])
        .env("CRYPTO_KEY", &key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = tokens.join("\n").into_bytes();
    input.extend_from_slice(b"\n\xff\xfe\xc3\n\xe6\x97\n");
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.matches("does not open").count(), 6, "{stderr}");
}

#[test]
fn queue_looks_at_the_queue_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let key = new_key();
    let server = Serving::start(
        &key,
        &["--queue", &url, "--max-attempts", "1", "--lease-secs", "1"],
    );
    let task = r#"{"peer":"3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41","id":5,"created_at":"2026-12-01T00:00:00Z","method":"parse_article","payload":{"article_id":5}}"#;
    let out = run(
        &key,
        &["call", "put_in_queue", task, "--addr", &server.addr],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let stats = run("", &["queue", "--queue", &url, "stats"], "");
    assert_eq!(stats.status.code(), Some(0), "{}", text(&stats.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["queued"], 1, "{stats}");

    // Another task under the same PEER:ID is refused, so that the name
    // `queue requeue` takes below names one task only.
    let same_name = r#"{"peer":"3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41","id":5,"created_at":"2026-12-01T00:00:00Z","method":"parse_article","payload":{"article_id":6}}"#;
    let out = run(
        &key,
        &["call", "put_in_queue", same_name, "--addr", &server.addr],
        "",
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"queued": false, "reason": "name_taken"})
    );
    let stats = run("", &["queue", "--queue", &url, "stats"], "");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        (&stats["queued"], &stats["names_taken"], &stats["full"]),
        (
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(0)
        ),
        "{stats}"
    );

    // Leased once (the only attempt allowed), its lease runs out, and the
    // next lease moves it to the dead letters.
    let out = run(
        &key,
        &["call", "get_task_from_queue", "--addr", &server.addr],
        "",
    );
    assert_eq!(out.status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(1200));
    let out = run(
        &key,
        &["call", "get_task_from_queue", "--addr", &server.addr],
        "",
    );
    assert_eq!(text(&out.stdout).trim(), "null", "{}", text(&out.stdout));
    // A dead letter nobody can read (as an older version could leave):
    // counted on stderr, the others listed.
    let written = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "XADD",
            "{stream-rpc}:dead",
            "*",
        ])
        .args(["task", "not a packet", "ref", "x:1", "key", "k"])
        .output()
        .expect("redis-cli beside redis-server");
    assert!(written.status.success(), "{}", text(&written.stderr));
    let dead = run("", &["queue", "--queue", &url, "dead"], "");
    assert_eq!(dead.status.code(), Some(0), "{}", text(&dead.stderr));
    assert!(
        text(&dead.stderr).contains("1 dead letter(s) could not be read"),
        "{}",
        text(&dead.stderr)
    );
    let dead: serde_json::Value = serde_json::from_slice(&dead.stdout).unwrap();
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    let name = dead[0]["task"].as_str().unwrap().to_owned();
    assert_eq!(name, "3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41:5");

    let out = run("", &["queue", "--queue", &url, "requeue", &name], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run("", &["queue", "--queue", &url, "requeue", &name], "");
    assert_eq!(out.status.code(), Some(1));
    let out = run("", &["queue", "--queue", &url, "requeue", "nonsense"], "");
    assert_eq!(out.status.code(), Some(2));
    let out = run("", &["queue", "--queue", &url, "purge-dead"], "");
    let purged: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(purged["purged"], 1, "the unreadable one");
    let out = run("", &["queue", "stats"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--queue"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn completions_and_help_for_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run("", &["completions", shell], "");
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("stream-rpc"), "{shell}");
    }
    for command in [
        "keygen",
        "call",
        "bench",
        "decode",
        "seal",
        "serve",
        "queue",
        "completions",
    ] {
        let out = run("", &[command, "--help"], "");
        assert!(out.status.success(), "{command}");
        assert!(text(&out.stdout).contains("Example"), "{command}");
    }
    for nested in [
        "stats",
        "dead",
        "requeue",
        "purge-dead",
        "put",
        "show",
        "cancel",
        "list",
        "tasks",
        "schedules",
        "schedule",
        "unschedule",
        "limit",
    ] {
        let out = run("", &["queue", nested, "--help"], "");
        assert!(text(&out.stdout).contains("Example"), "queue {nested}");
    }
    let out = run("", &["call", "--help"], "");
    for needle in ["--stream", "--max-items", "watch_stats", "130"] {
        assert!(text(&out.stdout).contains(needle), "call --help: {needle}");
    }
    let out = run("", &["--version"], "");
    assert!(text(&out.stdout).starts_with("stream-rpc "));
}

#[test]
fn bench_runs_bounded_and_reports_as_json() {
    let key = new_key();
    let server = Serving::start(&key, &["--log-level", "warn"]);
    let addr = server.addr.as_str();
    let json = |out: &Output| -> serde_json::Value {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let closed = [
        "bench",
        "--addr",
        addr,
        "--calls",
        "300",
        "--connections",
        "2",
        "--concurrency",
        "4",
        "--json",
    ];
    let report = json(&run(&key, &closed, ""));
    assert_eq!(
        (report["calls"].as_u64(), report["ok"].as_u64()),
        (Some(300), Some(300))
    );
    assert_eq!(report["errors"], serde_json::json!({}));
    let latency = &report["latency_us"];
    assert!(latency["p50"].as_u64().unwrap() > 0, "{report}");
    assert!(
        latency["p50"].as_u64() <= latency["p99"].as_u64(),
        "{report}"
    );
    assert!(
        latency["p99"].as_u64() <= latency["max"].as_u64(),
        "{report}"
    );

    // Open loop: 100 calls scheduled over one second.
    let open = [
        "bench",
        "--addr",
        addr,
        "--rate",
        "100",
        "--duration",
        "1",
        "--json",
    ];
    let report = json(&run(&key, &open, ""));
    let calls = report["calls"].as_u64().unwrap();
    assert!((90..=100).contains(&calls), "{report}");

    // Errors are counted by code.
    let refused = [
        "bench", "--addr", addr, "--method", "nope", "--calls", "20", "--json",
    ];
    let report = json(&run(&key, &refused, ""));
    assert_eq!(report["errors"], serde_json::json!({"unknown_method": 20}));

    // The text summary draws the latency histogram.
    let out = run(&key, &["bench", "--addr", addr, "--calls", "50"], "");
    assert!(text(&out.stdout).contains("p99.9"), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains('█'), "{}", text(&out.stdout));
    let bad = run(&key, &["bench", "--addr", addr, "--rate", "0"], "");
    assert_eq!(bad.status.code(), Some(2));
}

/// The body of `GET /metrics` at `addr`.
fn scrape(addr: &str) -> String {
    use std::io::Read;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let request =
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut body = String::new();
                if stream.read_to_string(&mut body).is_ok() && body.starts_with("HTTP/1.1 200") {
                    return body;
                }
            }
        }
        assert!(std::time::Instant::now() < deadline, "no metrics at {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the series `series` (name and labels as written) in a scrape.
fn value(scraped: &str, series: &str) -> f64 {
    scraped
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{scraped}"))
}

#[test]
fn the_metrics_endpoint_counts_what_was_done() {
    let key = new_key();
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = Serving::start(&key, &["--log-level", "warn", "--metrics", &metrics]);
    for _ in 0..5 {
        let out = run(&key, &["call", "ping", "--addr", &server.addr], "");
        assert_eq!(out.status.code(), Some(0));
    }
    let task = r#"{"peer":"3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41","id":6,"created_at":"2026-12-01T00:00:00Z","method":"parse_article","payload":{"article_id":6}}"#;
    run(
        &key,
        &["call", "put_in_queue", task, "--addr", &server.addr],
        "",
    );
    run(
        &key,
        &["call", "no_such_method", "--addr", &server.addr],
        "",
    );
    // Bad frames: garbage, and a token under another key.
    let mut raw = std::net::TcpStream::connect(&server.addr).unwrap();
    let foreign = Fernet::new(&new_key()).unwrap().encrypt(b"{}").unwrap();
    raw.write_all(b"garbage\n").unwrap();
    raw.write_all(&foreign).unwrap();
    raw.write_all(b"\n").unwrap();
    raw.flush().unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let scraped = loop {
        let scraped = scrape(&metrics);
        let settled = scraped.contains("stream_rpc_bad_frames_total{kind=\"wrong_key\"}")
            && scraped.contains("stream_rpc_queue_tasks{state=\"queued\"} 1");
        if settled || std::time::Instant::now() > deadline {
            break scraped;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (series, expected) in [
        (
            "stream_rpc_requests_total{method=\"ping\",outcome=\"ok\"}",
            5.0,
        ),
        (
            "stream_rpc_requests_total{method=\"-\",outcome=\"unknown_method\"}",
            1.0,
        ),
        (
            "stream_rpc_requests_total{method=\"put_in_queue\",outcome=\"ok\"}",
            1.0,
        ),
        (
            "stream_rpc_handler_duration_seconds_count{method=\"ping\"}",
            5.0,
        ),
        ("stream_rpc_connections_accepted_total", 8.0),
        ("stream_rpc_connections_open{role=\"server\"}", 1.0),
        ("stream_rpc_bad_frames_total{kind=\"garbage\"}", 1.0),
        ("stream_rpc_bad_frames_total{kind=\"wrong_key\"}", 1.0),
        ("stream_rpc_queue_tasks{state=\"queued\"}", 1.0),
    ] {
        assert_eq!(value(&scraped, series), expected, "{series}");
    }
    assert!(value(&scraped, "stream_rpc_received_bytes_total") > 1000.0);
    assert!(value(&scraped, "stream_rpc_sent_bytes_total") > 1000.0);
    drop(raw);
}

/// Runs the command with these environment variables set (and CRYPTO_KEY
/// as given).
fn run_with(key: &str, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("CRYPTO_KEY", key)
        .env_remove("STREAM_RPC_QUEUE")
        .env_remove("STREAM_RPC_HOST")
        .env_remove("STREAM_RPC_PORT");
    for (name, value) in vars {
        command.env(name, value);
    }
    command.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn seal_makes_tokens_that_decode_opens() {
    let key = new_key();
    let packet = r#"{"peer":"3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41","id":4,"created_at":"2026-12-01T00:00:00Z","method":"parse_article","payload":{"article_id":7}}"#;
    let out = run(&key, &["seal", packet], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert!(token.starts_with("gAAAAA"), "{token}");
    assert_eq!(token.lines().count(), 1);
    // The library opens it under the key.
    let plain = Fernet::new(&key)
        .unwrap()
        .decrypt(token.as_bytes())
        .unwrap();
    let opened: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    let given: serde_json::Value = serde_json::from_str(packet).unwrap();
    assert_eq!(opened, given);
    // `decode` opens it, and its output seals again (one per line on stdin).
    let out = run(&key, &["decode", &token], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let decoded: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decoded["packet"], given);
    let line = serde_json::to_string(&decoded).unwrap();
    let out = run(&key, &["seal"], &format!("{line}\n{packet}\n"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let tokens = text(&out.stdout);
    assert_eq!(tokens.lines().count(), 2, "{tokens}");
    let out = run(&key, &["decode"], &tokens);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).matches("\"parse_article\"").count(), 2);

    // Not a packet: every missing field named, nothing printed.
    let out = run(&key, &["seal", r#"{"method":"ping"}"#], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("lacks peer, id, created_at"), "{stderr}");
    let out = run(&key, &["seal", "not json"], "");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_task_that_is_no_packet_is_refused_naming_every_missing_field() {
    // Refused before anything is sent: no server needed.
    let key = new_key();
    let out = run(
        &key,
        &[
            "call",
            "put_in_queue",
            r#"{"method":"parse_article","payload":{}}"#,
            "--addr",
            "127.0.0.1:9",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("lacks peer, id, created_at:"), "{stderr}");
    assert!(
        stderr.contains("\"created_at\": \"2024-05-01T12:00:00Z\""),
        "{stderr}"
    );
    // The help shows what task.json holds.
    let out = run("", &["call", "--help"], "");
    let help = text(&out.stdout);
    assert!(help.contains("task.json holds"), "{help}");
    assert!(help.contains("\"method\": \"parse_article\""), "{help}");
}

#[test]
fn the_missing_key_message_names_the_command() {
    for args in [
        vec!["call", "ping", "--addr", "127.0.0.1:9"],
        vec!["decode", "gAAAAA"],
        vec!["seal", "{}"],
    ] {
        let out = run_with("", &[], &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("`stream-rpc keygen > key`"), "{stderr}");
        assert!(!stderr.contains("cargo run"), "{stderr}");
    }
}

#[test]
fn nobody_listening_is_said_once_with_the_address_and_the_default_host_is_this_machine() {
    let key = new_key();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    // STREAM_RPC_HOST=0.0.0.0, where a server listens, means this machine.
    let out = run_with(
        &key,
        &[("STREAM_RPC_HOST", "0.0.0.0"), ("STREAM_RPC_PORT", &port)],
        &["call", "ping"],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(stderr.matches(&addr).count(), 1, "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(!stderr.contains("0.0.0.0"), "{stderr}");

    // And with a server there, the call is answered.
    let server = Serving::start(&key, &[]);
    let port = server.addr.rsplit_once(':').unwrap().1.to_owned();
    let out = run_with(
        &key,
        &[("STREAM_RPC_HOST", "0.0.0.0"), ("STREAM_RPC_PORT", &port)],
        &["call", "ping"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn durations_take_a_unit_or_a_bare_number_of_seconds() {
    let key = new_key();
    let server = Serving::start(&key, &["--lease", "2m", "--log-level", "warn"]);
    let addr = server.addr.as_str();
    for timeout in ["3s", "500ms", "2m", "5", "1.5"] {
        let out = run(
            &key,
            &["call", "ping", "--addr", addr, "--timeout", timeout],
            "",
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{timeout}: {}",
            text(&out.stderr)
        );
    }
    for bad in ["0", "3x", "-1s", "soon"] {
        let flag = format!("--timeout={bad}");
        let out = run(&key, &["call", "ping", "--addr", addr, &flag], "");
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            text(&out.stderr).contains("--timeout"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = run(
        &key,
        &[
            "bench",
            "--addr",
            addr,
            "--duration",
            "300ms",
            "--timeout",
            "2s",
            "--json",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A token of 1985 is older than a minute.
    let old_key = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
    let old = "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA==";
    let out = run(old_key, &["decode", "--ttl", "1m", old], "");
    assert!(
        text(&out.stderr).contains("expired"),
        "{}",
        text(&out.stderr)
    );
    // A lease longer than a day is refused before anything starts.
    let out = run(&key, &["serve", "--port", "0", "--lease", "2d"], "");
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        &key,
        &["serve", "--port", "0", "--lease-secs", "100000"],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("at most a day"),
        "{}",
        text(&out.stderr)
    );
}

/// A server in this test's process with stream methods of every ending,
/// for `call --stream`: `count` (N items, then the end), `fail_after` (N
/// items, then an error packet), `forever` (items until cancelled),
/// `silent` (no item ever), `hang_up` (one item, then it closes the
/// connection) and the plain `ping`. Each stream's handler reports its
/// drop (the end of its future: after its end or its cancellation) on
/// `dropped`.
mod streams_server {
    use std::sync::mpsc;
    use std::time::Duration;

    use stream_rpc::{
        Config, Connector, Context, HandlerError, Packet, Protocol, Reply, StreamIo, Value, json,
    };

    /// Reports the method whose handler was dropped.
    struct Dropped(&'static str, mpsc::Sender<&'static str>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ = self.1.send(self.0);
        }
    }

    struct Streams {
        dropped: std::sync::Mutex<mpsc::Sender<&'static str>>,
    }

    impl Protocol for Streams {
        async fn process_message(&self, _: Context, packet: Packet) -> Result<Reply, HandlerError> {
            match packet.method.as_str() {
                "ping" => Ok(Reply::message("pong", Value::Null)),
                other => Err(HandlerError::unknown_method(other)),
            }
        }

        async fn process_stream(
            &self,
            ctx: Context,
            packet: Packet,
            mut io: StreamIo,
        ) -> Result<Value, HandlerError> {
            let name: &'static str = match packet.method.as_str() {
                "count" => "count",
                "fail_after" => "fail_after",
                "forever" => "forever",
                "silent" => "silent",
                "hang_up" => "hang_up",
                "ping" => return Err(HandlerError::not_a_stream("ping")),
                other => return Err(HandlerError::unknown_method(other)),
            };
            let _dropped = Dropped(name, self.dropped.lock().unwrap().clone());
            let mut output = io
                .output()
                .ok_or_else(|| HandlerError::failed("no output flow"))?;
            let gone = |_| HandlerError::failed("the opener went away");
            let n = packet.payload.as_u64().unwrap_or(0);
            match name {
                "count" | "fail_after" => {
                    for i in 1..=n {
                        output.send(json!(i)).await.map_err(gone)?;
                    }
                    if name == "fail_after" {
                        return Err(HandlerError::failed(format!("failed after {n} items")));
                    }
                }
                "forever" => {
                    for i in 1.. {
                        output.send(json!(i)).await.map_err(gone)?;
                    }
                }
                "silent" => output.closed().await,
                _ => {
                    output.send(json!(1)).await.map_err(gone)?;
                    ctx.connection().close();
                    output.closed().await;
                }
            }
            Ok(Value::Null)
        }
    }

    /// The server, on a runtime of its own; it stops when dropped.
    pub struct StreamsServer {
        pub addr: String,
        pub dropped: mpsc::Receiver<&'static str>,
        _runtime: tokio::runtime::Runtime,
    }

    impl StreamsServer {
        pub fn start(key: &str) -> StreamsServer {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let config = Config::builder()
                .key(key)
                .host("127.0.0.1")
                .port(0)
                .build()
                .unwrap();
            let server = runtime.block_on(Connector::new(config).bind()).unwrap();
            let addr = server.local_addr().to_string();
            let (tx, dropped) = mpsc::channel();
            runtime.spawn(server.serve(Streams {
                dropped: std::sync::Mutex::new(tx),
            }));
            StreamsServer {
                addr,
                dropped,
                _runtime: runtime,
            }
        }

        /// Waits (bounded) until the handler of `method` was dropped.
        pub fn wait_dropped(&self, method: &str) {
            let bound = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let left = bound.saturating_duration_since(std::time::Instant::now());
                match self.dropped.recv_timeout(left) {
                    Ok(name) if name == method => return,
                    Ok(_) => {}
                    Err(e) => panic!("the handler of {method} was not dropped: {e}"),
                }
            }
        }
    }
}

use streams_server::StreamsServer;

#[test]
fn call_stream_prints_each_item_as_a_line_and_exits_by_how_it_ended() {
    let key = new_key();
    let server = StreamsServer::start(&key);
    let addr = server.addr.as_str();

    // A stream that ends: every item, one compact line each, exit 0.
    let out = run(
        &key,
        &["call", "--stream", "count", "3", "--addr", addr],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n3\n");
    server.wait_dropped("count");

    // An error end: the items before it, then its code and message, exit 1.
    let out = run(
        &key,
        &["call", "--stream", "fail_after", "2", "--addr", addr],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n");
    assert!(
        text(&out.stderr).contains("handler_error: failed after 2 items"),
        "{}",
        text(&out.stderr)
    );

    // --max-items: that many, then the stream is cancelled on the server
    // (its handler dropped), exit 0.
    let out = run(
        &key,
        &[
            "call",
            "--stream",
            "forever",
            "--max-items",
            "5",
            "--addr",
            addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n3\n4\n5\n");
    server.wait_dropped("forever");

    // A stream opened to a plain method: said plainly, exit 1; to no
    // method: unknown_method, exit 1.
    let out = run(&key, &["call", "--stream", "ping", "--addr", addr], "");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let said = text(&out.stderr);
    assert!(said.contains("not_a_stream"), "{said}");
    assert!(
        said.contains("ping is a plain method: call it without --stream"),
        "{said}"
    );
    let out = run(&key, &["call", "--stream", "nope", "--addr", addr], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown_method"),
        "{}",
        text(&out.stderr)
    );

    // No item within --item-timeout: exit 2, and the stream is cancelled.
    let out = run(
        &key,
        &[
            "call",
            "--stream",
            "silent",
            "--item-timeout",
            "200ms",
            "--addr",
            addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );
    server.wait_dropped("silent");

    // The connection closing under the stream: the items before, exit 2,
    // and the last item's number said.
    let out = run(&key, &["call", "--stream", "hang_up", "--addr", addr], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n");
    assert!(
        text(&out.stderr).contains("after item 1"),
        "{}",
        text(&out.stderr)
    );

    // Flags that make no sense together are refused before connecting.
    for args in [
        vec!["call", "--stream", "count", "--packet"],
        vec!["call", "--stream", "count", "--notify"],
        vec!["call", "count", "--max-items", "2"],
    ] {
        let out = run(&key, &args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn ctrl_c_cancels_the_stream_and_exits_130() {
    let key = new_key();
    let server = StreamsServer::start(&key);
    let mut command = Command::new(BIN);
    command
        .args(["call", "--stream", "forever", "--window", "1", "--addr"])
        .arg(&server.addr)
        .env("CRYPTO_KEY", &key);
    let mut call = stream_rpc_test_support::Process::spawn("call --stream", command);
    // Items are printed as they come: the first before any end.
    call.wait_for("the first item", |line| line == "1");
    call.signal("-INT");
    let status = call.wait_exit();
    assert_eq!(status.code(), Some(130), "{}", call.output());
    assert!(
        call.has("interrupted: the stream is cancelled"),
        "{}",
        call.output()
    );
    // The cancel reached the server: its producer was dropped.
    server.wait_dropped("forever");
}

#[test]
fn watch_stats_streams_the_queue_counts_of_serve() {
    let key = new_key();
    let server = Serving::start(&key, &[]);
    let addr = server.addr.as_str();
    let out = run(
        &key,
        &[
            "call",
            "--stream",
            "watch_stats",
            r#"{"every_ms": 10}"#,
            "--max-items",
            "2",
            "--addr",
            addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for stats in &lines {
        for field in ["queued", "leased", "done", "dead"] {
            assert!(stats[field].is_u64(), "{field} in {stats}");
        }
    }
    // Below the minimum: refused before the first item, exit 1.
    let out = run(
        &key,
        &[
            "call",
            "--stream",
            "watch_stats",
            r#"{"every_ms": 5}"#,
            "--addr",
            addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("invalid_payload") && text(&out.stderr).contains("every_ms"),
        "{}",
        text(&out.stderr)
    );
}

/// The task set of the `queue put --wait` tests, served by a typed worker
/// in this process.
#[stream_rpc::service]
trait Sums {
    /// Twice `n`.
    async fn double(&self, n: u64) -> u64;
    /// Fails for good.
    async fn refuse(&self, n: u64) -> Result<u64, stream_rpc::HandlerError>;
}

struct Summer;

impl Sums for Summer {
    async fn double(&self, n: u64) -> u64 {
        n * 2
    }

    async fn refuse(&self, n: u64) -> Result<u64, stream_rpc::HandlerError> {
        Err(stream_rpc::HandlerError::permanent(format!(
            "{n} is refused"
        )))
    }
}

/// A typed worker of `Sums` on `addr`, run by `runtime` until `stop` is sent.
fn sums_worker(
    runtime: &tokio::runtime::Runtime,
    key: &str,
    addr: &str,
) -> tokio::sync::oneshot::Sender<()> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let config = stream_rpc::Config::builder()
        .key(key)
        .host(host)
        .port(port.parse().unwrap())
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(async move {
        stream_rpc::tasks::Worker::new(SumsServer::new(Summer))
            .concurrency(2)
            .grace(Duration::from_millis(200))
            .run_until(stream_rpc::Connector::new(config), async move {
                let _ = stopped.await;
            })
            .await
    });
    stop
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} / {}", text(&out.stdout), text(&out.stderr)))
}

#[test]
fn queue_put_wait_prints_the_result_and_exits_by_outcome() {
    let key = new_key();
    let server = Serving::start(&key, &["--log-level", "warn"]);
    let addr = server.addr.as_str();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _worker = sums_worker(&runtime, &key, addr);

    // Done: the result on stdout, exit 0.
    let out = run(
        &key,
        &[
            "queue", "put", "double", "21", "--wait", "5s", "--addr", addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_of(&out), serde_json::json!(42));

    // Failed for good: the error on stderr, exit 1.
    let out = run(
        &key,
        &[
            "queue", "put", "refuse", "5", "--wait", "5s", "--addr", addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("5 is refused"), "{stderr}");

    // Nobody serves the method: not finished in time, exit 2, the task named.
    let out = run(
        &key,
        &[
            "queue",
            "put",
            "nobody_serves",
            "--wait",
            "300ms",
            "--addr",
            addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("has not finished within") && stderr.contains("queue show"),
        "{stderr}"
    );
    let task = stderr
        .split_whitespace()
        .find(|word| word.contains(':') && word.len() > 36 && !word.contains('`'))
        .unwrap_or_else(|| panic!("no task named in {stderr}"));
    let out = run(&key, &["queue", "show", task, "--addr", addr], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_of(&out)["state"], "queued");

    // No server: exit 2 naming the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = run(
        &key,
        &[
            "queue", "put", "double", "1", "--wait", "1s", "--addr", &nowhere,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&nowhere),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn queue_put_show_list_cancel_through_a_server() {
    let key = new_key();
    let server = Serving::start(&key, &["--log-level", "warn"]);
    let addr = server.addr.as_str();

    // Delayed: scheduled, with its PEER:ID printed.
    let out = run(
        &key,
        &[
            "queue",
            "put",
            "parse_article",
            r#"{"article_id": 3}"#,
            "--delay",
            "1m",
            "--priority",
            "high",
            "--addr",
            addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let put = json_of(&out);
    assert_eq!(put["state"], "scheduled", "{put}");
    let task = put["task"].as_str().unwrap().to_owned();
    assert!(task.parse::<stream_rpc::tasks::TaskRef>().is_ok(), "{task}");

    // The same task again: found held, not put twice.
    let out = run(
        &key,
        &[
            "queue",
            "put",
            "parse_article",
            r#"{"article_id": 3}"#,
            "--addr",
            addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_of(&out)["deduplicated"], true);

    let out = run(&key, &["queue", "show", &task, "--addr", addr], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = json_of(&out);
    assert_eq!(shown["task"], task.as_str());
    assert_eq!(shown["priority"], "high");
    assert_eq!(shown["payload"], serde_json::json!({"article_id": 3}));

    let out = run(
        &key,
        &["queue", "list", "--state", "scheduled", "--addr", addr],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed = json_of(&out);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["task"], task.as_str());

    // Cancelled before it ran; a second cancel finds it finished (exit 1).
    let out = run(&key, &["queue", "cancel", &task, "--addr", addr], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_of(&out)["outcome"], "cancelled");
    let out = run(&key, &["queue", "cancel", &task, "--addr", addr], "");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out)["state"], "cancelled");
    let out = run(&key, &["queue", "tasks", "--addr", addr], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_of(&out)["parse_article"]["cancelled"], 1);

    // Never put: exit 1; not a PEER:ID, a bad priority or duration: exit 2
    // before anything is sent.
    let unknown = format!("{}:9", uuid::Uuid::new_v4());
    let out = run(&key, &["queue", "show", &unknown, "--addr", addr], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no task"),
        "{}",
        text(&out.stderr)
    );
    for args in [
        &["queue", "show", "nine", "--addr", addr][..],
        &["queue", "put", "m", "--priority", "urgent", "--addr", addr],
        &["queue", "put", "m", "--delay", "soon", "--addr", addr],
        &["queue", "put", "m", "not json", "--addr", addr],
        &["queue", "list", "--state", "gone", "--addr", addr],
    ] {
        let out = run(&key, args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!text(&out.stderr).is_empty(), "{args:?}");
    }
}

#[test]
fn queue_schedules_and_limits_through_a_server() {
    let key = new_key();
    let server = Serving::start(&key, &["--log-level", "warn"]);
    let addr = server.addr.as_str();

    let out = run(
        &key,
        &[
            "queue",
            "schedule",
            "nightly",
            "report",
            r#"{"kind": "daily"}"#,
            "--every",
            "1h",
            "--addr",
            addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_of(&out)["name"], "nightly");
    let out = run(&key, &["queue", "schedules", "--addr", addr], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let schedules = json_of(&out);
    assert_eq!(schedules[0]["every_ms"], 3_600_000, "{schedules}");
    // A bad cron expression: the server's reason, exit 1.
    let out = run(
        &key,
        &[
            "queue",
            "schedule",
            "bad",
            "report",
            "--cron",
            "every tuesday",
            "--addr",
            addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("invalid_payload"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &key,
        &["queue", "unschedule", "nightly", "--addr", addr],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_of(&out)["removed"], true);
    let out = run(
        &key,
        &["queue", "unschedule", "nightly", "--addr", addr],
        "",
    );
    assert_eq!(out.status.code(), Some(1));

    let out = run(
        &key,
        &[
            "queue",
            "limit",
            "fetch_page",
            "--rate",
            "2/s",
            "--concurrency",
            "3",
            "--addr",
            addr,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        json_of(&out)["fetch_page"],
        serde_json::json!({"concurrency": 3, "rate": {"count": 2, "per_ms": 1000}})
    );
    let out = run(
        &key,
        &["queue", "limit", "fetch_page", "--clear", "--addr", addr],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(json_of(&out).get("fetch_page").is_none());
    // Neither a limit nor --clear: refused by the command.
    let out = run(&key, &["queue", "limit", "fetch_page", "--addr", addr], "");
    assert_eq!(out.status.code(), Some(2));
}
