//! The settings' tests.
use std::collections::HashMap;
use std::env::VarError;
use std::time::Duration;

use super::*;
use crate::Fernet;

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, VarError> + use<> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned().ok_or(VarError::NotPresent)
}

fn key() -> String {
    Fernet::generate_key().unwrap()
}

#[test]
fn defaults_listen_everywhere_on_8888() {
    let config = ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, &key())]))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(config.host(), "0.0.0.0");
    assert_eq!(config.port(), 8888);
    assert_eq!(config.terminator(), b"\n");
}

#[test]
fn the_port_variable_sets_the_port() {
    let config = ConfigBuilder::from_lookup(lookup(&[
        (ENV_KEY, &key()),
        (ENV_HOST, "127.0.0.1"),
        (ENV_PORT, "9999"),
    ]))
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(config.host(), "127.0.0.1");
    assert_eq!(config.port(), 9999);
}

#[test]
fn a_missing_key_says_how_to_make_one() {
    let err = ConfigBuilder::from_lookup(lookup(&[]))
        .unwrap()
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::MissingKey);
    assert!(err.to_string().contains("`stream-rpc keygen`"), "{err}");
    let err = ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, "  ")]))
        .unwrap()
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::MissingKey);
}

#[test]
fn bad_values_name_the_variable_and_never_the_key() {
    let secret = "not-a-real-key-but-secret";
    let err = ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, secret)]))
        .unwrap()
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("CRYPTO_KEY is not valid"), "{text}");
    assert!(!text.contains(secret), "{text}");

    for (var, value) in [(ENV_PORT, "80000"), (ENV_PORT, "http")] {
        let err =
            ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, &key()), (var, value)])).unwrap_err();
        assert!(err.to_string().starts_with(var), "{err}");
        assert!(err.to_string().contains(value), "{err}");
    }

    let not_unicode = |name: &str| {
        if name == ENV_HOST {
            Err(VarError::NotUnicode("\u{fffd}".into()))
        } else {
            Err(VarError::NotPresent)
        }
    };
    let err = ConfigBuilder::from_lookup(not_unicode).unwrap_err();
    assert!(err.to_string().starts_with(ENV_HOST), "{err}");
}

#[test]
fn builder_checks_terminator_limits_and_timeouts() {
    let base = || Config::builder().key(key());
    assert!(base().terminator("\r\n").build().is_ok());
    assert!(base().terminator("").build().is_err());
    assert!(base().terminator("X").build().is_err());
    assert!(base().terminator("=").build().is_err());
    let limits = Limits {
        max_connections: 0,
        ..Limits::default()
    };
    assert!(base().limits(limits).build().is_err());
    for (entries, ok) in [
        (0, false),
        (1, true),
        (1 << 24, true),
        ((1 << 24) + 1, false),
    ] {
        let limits = Limits {
            replay_cache_entries: entries,
            ..Limits::default()
        };
        assert_eq!(base().limits(limits).build().is_ok(), ok, "{entries}");
    }
    let timeouts = Timeouts {
        idle: Some(Duration::ZERO),
        ..Timeouts::default()
    };
    assert!(base().timeouts(timeouts).build().is_err());
    assert!(base().host("").build().is_err());
    assert!(base().host("::1").build().is_ok());
}

#[test]
fn the_per_address_cap_is_read_and_checked_with_the_variable_named() {
    let build = |value: &str| {
        ConfigBuilder::from_lookup(lookup(&[
            (ENV_KEY, &key()),
            (ENV_MAX_CONNECTIONS_PER_IP, value),
        ]))
        .and_then(ConfigBuilder::build)
    };
    let config = ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, &key())]))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(config.limits().max_connections_per_ip, 64);
    assert_eq!(build(" 5 ").unwrap().limits().max_connections_per_ip, 5);
    // Kept by a program that changes other limits from the current ones.
    let builder = ConfigBuilder::from_lookup(lookup(&[
        (ENV_KEY, &key()),
        (ENV_MAX_CONNECTIONS_PER_IP, "7"),
    ]))
    .unwrap();
    let limits = builder.current_limits().with_max_connections(100);
    let config = builder.limits(limits).build().unwrap();
    assert_eq!(config.limits().max_connections_per_ip, 7);
    assert_eq!(config.limits().max_connections, 100);
    assert_eq!(
        build("1048576").unwrap().limits().max_connections_per_ip,
        1 << 20
    );
    for bad in ["0", "-1", "many", "1048577", "18446744073709551615", "1e9"] {
        let err = build(bad).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(ENV_MAX_CONNECTIONS_PER_IP),
            "{bad}: {text}"
        );
        assert!(text.contains(bad), "{bad}: {text}");
    }
    // In code, extreme values are refused with the setting named (and
    // never reach a semaphore).
    let base = || Config::builder().key(key());
    for (limits, setting) in [
        (
            Limits::default().with_max_connections_per_ip(0),
            "max_connections_per_ip",
        ),
        (
            Limits::default().with_max_connections_per_ip(usize::MAX),
            "max_connections_per_ip",
        ),
        (
            Limits::default().with_max_connections(usize::MAX),
            "max_connections",
        ),
        (
            Limits::default().with_max_outbox_bytes(0),
            "max_outbox_bytes",
        ),
    ] {
        let err = base().limits(limits).build().unwrap_err();
        assert!(err.to_string().starts_with(setting), "{err}");
    }
}

#[test]
fn server_lists_are_read_or_refused_with_the_variable_named() {
    assert_eq!(
        parse_servers("a:1,b:2 , [::1]:3").unwrap(),
        [
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("::1".to_owned(), 3)
        ]
    );
    for bad in [
        "", "a", "a:", ":1", "a:0", "a:70000", "a:1,,b:2", "a b:1", "[::1:2",
    ] {
        let err = parse_servers(bad).unwrap_err();
        assert!(err.to_string().starts_with(ENV_SERVERS), "{bad:?}: {err}");
    }
}

#[test]
fn settings_build_in_one_expression() {
    let limits = Limits::default()
        .with_max_frame_len(4096)
        .with_max_connections(7)
        .with_max_concurrent_handlers(3)
        .with_max_in_flight_calls(5)
        .with_max_bad_frames_in_row(2)
        .with_outgoing_queue(9)
        .with_replay_cache_entries(64)
        .with_max_connections_per_ip(2)
        .with_max_outbox_bytes(1000)
        .with_max_streams(11)
        .with_stream_window(12)
        .with_stream_window_bytes(13);
    let expected = Limits {
        max_frame_len: 4096,
        max_connections: 7,
        max_connections_per_ip: 2,
        max_outbox_bytes: 1000,
        max_concurrent_handlers: 3,
        max_in_flight_calls: 5,
        max_bad_frames_in_row: 2,
        outgoing_queue: 9,
        replay_cache_entries: 64,
        max_streams: 11,
        stream_window: 12,
        stream_window_bytes: 13,
    };
    assert_eq!(limits, expected);
    let second = Duration::from_secs(1);
    let timeouts = Timeouts::default()
        .with_first_frame(second)
        .with_idle(None)
        .with_write(2 * second)
        .with_call(3 * second)
        .with_connect(4 * second)
        .with_shutdown_grace(5 * second);
    let expected = Timeouts {
        first_frame: second,
        idle: None,
        write: 2 * second,
        call: 3 * second,
        connect: 4 * second,
        shutdown_grace: 5 * second,
    };
    assert_eq!(timeouts, expected);
}

#[test]
fn debug_output_redacts_the_key() {
    let key = key();
    let builder = Config::builder().key(key.clone());
    assert!(!format!("{builder:?}").contains(&key));
    let config = builder.build().unwrap();
    assert!(!format!("{config:?}").contains(&key));
}

#[test]
fn every_limit_at_its_extreme_is_refused_with_its_name() {
    let base = || Config::builder().key(key());
    let at = |limits: Limits| base().limits(limits).build();
    type Setter = fn(Limits, usize) -> Limits;
    let cases: [(&str, Setter); 8] = [
        ("max_frame_len", Limits::with_max_frame_len),
        ("max_connections", Limits::with_max_connections),
        (
            "max_connections_per_ip",
            Limits::with_max_connections_per_ip,
        ),
        (
            "max_concurrent_handlers",
            Limits::with_max_concurrent_handlers,
        ),
        ("max_in_flight_calls", Limits::with_max_in_flight_calls),
        ("outgoing_queue", Limits::with_outgoing_queue),
        ("max_outbox_bytes", Limits::with_max_outbox_bytes),
        ("replay_cache_entries", Limits::with_replay_cache_entries),
    ];
    for (setting, set) in cases {
        for value in [0, usize::MAX] {
            let err = at(set(Limits::default(), value)).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("{setting} is not valid")),
                "{text}"
            );
            assert!(text.contains(&value.to_string()), "{text}");
        }
    }
    let err = at(Limits::default().with_max_bad_frames_in_row(0)).unwrap_err();
    assert!(
        err.to_string().starts_with("max_bad_frames_in_row"),
        "{err}"
    );
    // The largest values allowed build.
    let largest = Limits::default()
        .with_max_frame_len(MAX_FRAME_LEN_LIMIT)
        .with_max_connections(MAX_CONNECTIONS_LIMIT)
        .with_max_concurrent_handlers(MAX_PER_CONNECTION_LIMIT)
        .with_max_in_flight_calls(MAX_PER_CONNECTION_LIMIT)
        .with_outgoing_queue(MAX_PER_CONNECTION_LIMIT)
        .with_max_outbox_bytes(MAX_OUTBOX_BYTES_LIMIT)
        .with_max_bad_frames_in_row(u32::MAX);
    assert!(at(largest).is_ok());
}

#[test]
fn the_largest_limits_fit_the_semaphores_they_size() {
    // `Semaphore::new` panics above this: every limit that sizes one stays
    // far below.
    let most = tokio::sync::Semaphore::MAX_PERMITS;
    for limit in [MAX_CONNECTIONS_LIMIT, MAX_PER_CONNECTION_LIMIT] {
        assert!(limit <= most / 1024, "{limit}");
    }
}

#[test]
fn a_bad_value_set_in_code_names_the_setting_not_the_variable() {
    let err = Config::builder().key(key()).host(" ").build().unwrap_err();
    assert!(err.to_string().starts_with("host is not valid"), "{err}");
    let err = ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, &key()), (ENV_HOST, "a b")]))
        .unwrap()
        .build()
        .unwrap_err();
    assert!(err.to_string().starts_with(ENV_HOST), "{err}");
    // The key too: set in code, it is `key`; from the environment, CRYPTO_KEY.
    let err = Config::builder().key("not-a-key").build().unwrap_err();
    assert!(err.to_string().starts_with("key is not valid"), "{err}");
    // The call limit is named as itself, not as the handler limit.
    let err = Config::builder()
        .key(key())
        .limits(Limits::default().with_max_in_flight_calls(usize::MAX))
        .build()
        .unwrap_err();
    assert!(err.to_string().starts_with("max_in_flight_calls"), "{err}");
}

#[test]
fn a_client_connects_to_this_machine_for_an_unspecified_host() {
    assert_eq!(connect_host("0.0.0.0"), "127.0.0.1");
    assert_eq!(connect_host("::"), "::1");
    assert_eq!(connect_host("0:0:0:0:0:0:0:0"), "::1");
    for kept in [
        "127.0.0.1",
        "10.0.0.5",
        "::1",
        "example.com",
        "0.0.0.0.example",
    ] {
        assert_eq!(connect_host(kept), kept);
    }
    assert_eq!(connect_host(DEFAULT_HOST), DEFAULT_CONNECT_HOST);
}
