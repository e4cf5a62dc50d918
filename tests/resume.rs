//! The resume idiom across a server kill: the `resume` example's client
//! reads a stream from its server, the server is killed with SIGKILL
//! mid-stream and started again on the same port, and the client resumes
//! from where it stopped: it prints every item exactly once, in order.
//!
//! Every wait is on a line of output, bounded; the processes are killed
//! when the test ends.

use std::process::Command;

use stream_rpc_test_support::{Process, free_port};

/// How many items the client asks for.
const ITEMS: u64 = 300;

fn resume(role: &[&str], key: &str, port: &str) -> Process {
    let mut command = Command::new(stream_rpc_test_support::example("resume"));
    command.args(role).env_clear().envs([
        ("CRYPTO_KEY", key),
        ("STREAM_RPC_HOST", "127.0.0.1"),
        ("STREAM_RPC_PORT", port),
        ("RESUME_EVERY_MS", "5"),
        ("STREAM_RPC_LOG_LVL", "WARNING"),
    ]);
    Process::spawn(format!("resume {}", role.join(" ")), command)
}

/// The items the client printed, in order.
fn items(client: &Process) -> Vec<u64> {
    client
        .seen()
        .iter()
        .filter_map(|line| line.strip_prefix("item "))
        .map(|number| number.parse().expect("an item line holds a number"))
        .collect()
}

#[test]
fn a_client_resumes_a_stream_after_its_server_is_killed() {
    let key = stream_rpc::Fernet::generate_key().unwrap();
    let port = free_port().to_string();
    let mut server = resume(&["server"], &key, &port);
    server.serving_port();
    let mut client = resume(&["client", &ITEMS.to_string()], &key, &port);

    // Mid-stream: some items arrived, most are still to come.
    client.wait_for_count("item ", 40);
    server.signal("-KILL");
    server.wait_exit();
    let mut server = resume(&["server"], &key, &port);
    server.serving_port();

    let status = client.wait_exit();
    let output = client.output();
    assert!(status.success(), "the client failed:\n{output}");
    // The kill was felt, and the client resumed after it.
    assert!(
        output.contains("disconnected after"),
        "no disconnect in:\n{output}"
    );
    assert!(output.contains(&format!("done: {ITEMS} items")), "{output}");
    // Every item exactly once, in order: nothing lost, nothing repeated.
    assert_eq!(items(&client), (1..=ITEMS).collect::<Vec<_>>(), "{output}");
    assert!(server.still_running());
}
