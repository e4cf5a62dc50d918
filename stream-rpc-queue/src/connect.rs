//! Opening a Redis client: `redis://`, or `rediss://` (Redis over TLS)
//! with the trust anchors and client identity of [`RedisTls`].

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::QueueError;

/// The environment variable naming a PEM file of the certificate
/// authorities trusted for Redis's certificate (`rediss://` only). Without
/// it, the system's trust store is used.
pub const ENV_TLS_CA: &str = "STREAM_RPC_QUEUE_TLS_CA";
/// The environment variable naming a PEM file of the certificate chain
/// this server shows Redis (for a Redis with `tls-auth-clients yes`); goes
/// with [`ENV_TLS_KEY`].
pub const ENV_TLS_CERT: &str = "STREAM_RPC_QUEUE_TLS_CERT";
/// The environment variable naming the PEM file of the private key of
/// [`ENV_TLS_CERT`].
pub const ENV_TLS_KEY: &str = "STREAM_RPC_QUEUE_TLS_KEY";

/// How to talk TLS to a `rediss://` Redis: whom to trust, and what to show.
///
/// Redis's certificate is always checked, against the system's trust store
/// or [`ca_file`](Self::ca_file), and must name the URL's host: there is no
/// switch to turn the check off (a `#insecure` URL is refused), since a
/// queue that accepts any certificate hands its tasks to whoever sits on
/// the path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisTls {
    /// A PEM file of the certificate authorities trusted for Redis's
    /// certificate, instead of the system's (a private CA).
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate chain and the PEM file of its private key, shown
    /// to a Redis that asks for a client certificate.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

impl RedisTls {
    /// The system's trust store and no client certificate.
    pub fn new() -> Self {
        RedisTls::default()
    }

    /// Sets [`ca_file`](Self::ca_file).
    #[must_use]
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Sets [`client_identity`](Self::client_identity).
    #[must_use]
    pub fn with_client_identity(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.client_identity = Some((cert_file.into(), key_file.into()));
        self
    }

    /// Whether anything differs from the defaults.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_identity.is_some()
    }

    /// Reads [`ENV_TLS_CA`], [`ENV_TLS_CERT`] and [`ENV_TLS_KEY`] through
    /// `lookup` (empty values count as unset); a certificate without its
    /// key, or a key without its certificate, is an error.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, QueueError> {
        let read = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        let client_identity = match (read(ENV_TLS_CERT), read(ENV_TLS_KEY)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(QueueError::Invalid {
                    setting: ENV_TLS_KEY,
                    reason: format!("{ENV_TLS_CERT} is set, so its private key must be too"),
                });
            }
            (None, Some(_)) => {
                return Err(QueueError::Invalid {
                    setting: ENV_TLS_CERT,
                    reason: format!("{ENV_TLS_KEY} is set, so its certificate must be too"),
                });
            }
        };
        Ok(RedisTls {
            ca_file: read(ENV_TLS_CA),
            client_identity,
        })
    }
}

/// The scheme of a Redis URL, for messages that must not show the rest (it
/// may hold a password).
fn scheme(url: &str) -> &str {
    url.split("://").next().unwrap_or_default()
}

/// `url` with the password of its user part (`redis://user:secret@host`,
/// `redis://:secret@host`) replaced by `***`, and a user part without a
/// colon (`redis://secret@host`, which some clients read as a password)
/// replaced whole, for `Debug` and logs. A value that is not a URL (no
/// `://`), such as `memory`, is shown as it is.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the first `/`, `?` or `#`; its user part at
    // its last `@`.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let (user_info, host) = authority.split_at(at);
    let shown = match user_info.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{shown}{host}{tail}")
}

/// Checks a queue URL's form without connecting: `redis://`, or `rediss://`
/// in a build with the `tls` feature, without `#insecure`; TLS files only
/// with `rediss://`.
pub(crate) fn check_url(
    url: &str,
    tls: &RedisTls,
    setting: &'static str,
) -> Result<(), QueueError> {
    let invalid = |reason: String| QueueError::Invalid { setting, reason };
    if url.starts_with("redis://") {
        if tls.is_set() {
            return Err(invalid(format!(
                "TLS files are set ({ENV_TLS_CA}, {ENV_TLS_CERT}, {ENV_TLS_KEY}) but the URL \
                 is redis://, which is not encrypted: use rediss://"
            )));
        }
        return Ok(());
    }
    if !url.starts_with("rediss://") {
        return Err(invalid(format!(
            "expected a redis:// or rediss:// URL, got a value starting {:?}",
            scheme(url)
        )));
    }
    if !cfg!(feature = "tls") {
        return Err(invalid(
            "this build has no TLS (stream-rpc-queue's `tls` feature is off): \
             build with it, or use redis:// on a trusted network"
                .to_owned(),
        ));
    }
    if url.contains('#') {
        return Err(invalid(format!(
            "a rediss:// URL takes no #fragment: Redis's certificate is always checked \
             (`#insecure` is not supported); for a private CA set {ENV_TLS_CA}"
        )));
    }
    Ok(())
}

/// Reads one PEM file named by a setting, which must hold at least one
/// `-----BEGIN {what}-----` block (a file without one would otherwise be
/// an empty trust store, and every certificate unknown).
#[cfg(feature = "tls")]
fn read_pem(
    path: &std::path::Path,
    setting: &'static str,
    what: &str,
) -> Result<Vec<u8>, QueueError> {
    let invalid = |reason: String| QueueError::Invalid { setting, reason };
    let pem =
        std::fs::read(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    let begin = format!("-----BEGIN {what}-----");
    let holds = |begin: &[u8]| pem.windows(begin.len()).any(|window| window == begin);
    let found = if what == "PRIVATE KEY" {
        ["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"]
            .iter()
            .any(|kind| holds(format!("-----BEGIN {kind}-----").as_bytes()))
    } else {
        holds(begin.as_bytes())
    };
    if !found {
        return Err(invalid(format!(
            "{} holds no PEM `{begin}` block",
            path.display()
        )));
    }
    Ok(pem)
}

/// A client for the Redis at `url`, with `tls` for a `rediss://` URL.
pub(crate) fn client(url: &str, tls: &RedisTls) -> Result<redis::Client, QueueError> {
    check_url(url, tls, "url")?;
    let invalid = |e: redis::RedisError| QueueError::Invalid {
        setting: "url",
        reason: e.to_string(),
    };
    if !url.starts_with("rediss://") {
        return redis::Client::open(url).map_err(invalid);
    }
    #[cfg(feature = "tls")]
    {
        // rustls needs a process-wide crypto provider; an application that
        // installed its own keeps it (installing fails, harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        if !tls.is_set() {
            return redis::Client::open(url).map_err(invalid);
        }
        let root_cert = tls
            .ca_file
            .as_deref()
            .map(|path| read_pem(path, ENV_TLS_CA, "CERTIFICATE"))
            .transpose()?;
        let client_tls = match &tls.client_identity {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem(cert, ENV_TLS_CERT, "CERTIFICATE")?,
                client_key: read_pem(key, ENV_TLS_KEY, "PRIVATE KEY")?,
            }),
            None => None,
        };
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| QueueError::Invalid {
            setting: "tls",
            reason: e.to_string(),
        })
    }
    #[cfg(not(feature = "tls"))]
    unreachable!("check_url refuses rediss:// without the tls feature")
}

/// A reconnecting connection to the Redis at `url`: connected now (or an
/// error), then reconnecting by itself after Redis went away. Commands that
/// take longer than `timeout` fail; connecting is retried `retries` times.
pub(crate) async fn connect(
    url: &str,
    tls: &RedisTls,
    timeout: Duration,
    connect_timeout: Duration,
    retries: usize,
) -> Result<ConnectionManager, QueueError> {
    let client = client(url, tls)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(connect_timeout))
        .set_number_of_retries(retries);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| {
            let typed = if e.is_timeout() {
                QueueError::Timeout(e.to_string())
            } else {
                QueueError::Unavailable(e.to_string())
            };
            tracing::warn!("redis: cannot connect: {typed}");
            typed
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn tls_settings_come_from_the_environment() {
        assert_eq!(RedisTls::from_lookup(lookup(&[])).unwrap(), RedisTls::new());
        let tls = RedisTls::from_lookup(lookup(&[
            (ENV_TLS_CA, "/etc/ca.pem"),
            (ENV_TLS_CERT, " /etc/me.pem "),
            (ENV_TLS_KEY, "/etc/me.key"),
        ]))
        .unwrap();
        assert_eq!(
            tls,
            RedisTls::new()
                .with_ca_file("/etc/ca.pem")
                .with_client_identity("/etc/me.pem", "/etc/me.key")
        );
        let e = RedisTls::from_lookup(lookup(&[(ENV_TLS_CERT, "/etc/me.pem")])).unwrap_err();
        assert!(
            matches!(
                e,
                QueueError::Invalid {
                    setting: ENV_TLS_KEY,
                    ..
                }
            ),
            "{e}"
        );
        let e = RedisTls::from_lookup(lookup(&[(ENV_TLS_KEY, "/etc/me.key")])).unwrap_err();
        assert!(
            matches!(
                e,
                QueueError::Invalid {
                    setting: ENV_TLS_CERT,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_password_in_a_url_is_redacted() {
        for (url, shown) in [
            ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://user:secret@host/", "redis://user:***@host/"),
            ("rediss://secret@host", "rediss://***@host"),
            ("redis://u:p@ss@host/0", "redis://u:***@host/0"),
            ("redis://host:6379/0", "redis://host:6379/0"),
            ("memory", "memory"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn urls_are_checked_without_showing_them() {
        let none = RedisTls::new();
        check_url("redis://:pw@host:6379/0", &none, "url").unwrap();
        let e = check_url("http://:secret@host", &none, "url").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let with_ca = RedisTls::new().with_ca_file("ca.pem");
        let e = check_url("redis://host", &with_ca, "url").unwrap_err();
        assert!(e.to_string().contains("use rediss://"), "{e}");
        if cfg!(feature = "tls") {
            check_url("rediss://:pw@host:6380/", &with_ca, "url").unwrap();
            let e = check_url("rediss://host/#insecure", &none, "url").unwrap_err();
            assert!(e.to_string().contains("always checked"), "{e}");
        } else {
            let e = check_url("rediss://host", &none, "url").unwrap_err();
            assert!(e.to_string().contains("`tls` feature"), "{e}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn an_unreadable_tls_file_names_its_setting() {
        let tls = RedisTls::new().with_ca_file("/nonexistent/ca.pem");
        let e = client("rediss://127.0.0.1:1/", &tls).unwrap_err();
        assert!(
            matches!(&e, QueueError::Invalid { setting: ENV_TLS_CA, reason } if reason.contains("/nonexistent/ca.pem")),
            "{e}"
        );
    }
}
