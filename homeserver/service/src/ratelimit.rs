//! Token-bucket rate limits per user and per IP.

use std::{collections::HashMap, time::Instant};

use paracord_core::{Config, Error, Result};
use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Registration and login, keyed by client IP.
    Auth,
    /// Sending events, keyed by user.
    Send,
    /// Creating rooms (and guilds), keyed by user.
    CreateRoom,
    /// Joins, invites, leaves, kicks, bans and knocks, keyed by user.
    Membership,
    /// Display name and avatar changes, keyed by user.
    Profile,
    /// Reports of events, rooms and users, keyed by user.
    Report,
    /// Typing notices, keyed by user.
    Typing,
    /// Presence updates, keyed by user.
    Presence,
    /// `sendToDevice` requests, keyed by user.
    ToDevice,
    /// Managing and reading delayed events (MSC4140: restarts are a client's heartbeat),
    /// keyed by user.
    DelayedEvents,
    /// LiveKit tokens and delegated leave events of the MatrixRTC focus (MSC4195), keyed by
    /// user: each may create a LiveKit room.
    Rtc,
    /// Executions of a webhook, keyed by webhook: Discord's bucket of 5 requests per 2 s,
    /// part of the webhook contract (spec/webhooks.md), so always on.
    Webhook,
}

/// [`Limit::Webhook`]: 5 at once, refilled at 2.5 a second.
const WEBHOOK: (f64, f64) = (2.5, 5.0);

pub struct RateLimiter {
    enabled: bool,
    auth: (f64, f64),
    send: (f64, f64),
    action: (f64, f64),
    ephemeral: (f64, f64),
    buckets: Mutex<HashMap<(Limit, String), (f64, Instant)>>,
    /// Keys (user ids) never limited: users of appservices registered `rate_limited: false`.
    exempt: Option<Exemption>,
}

/// Says whether a key is exempt from rate limits.
pub type Exemption = Box<dyn Fn(&str) -> bool + Send + Sync>;

impl RateLimiter {
    /// Limits from `config`; keys `exempt` says are exempt are never limited.
    pub fn new(config: &Config, exempt: Option<Exemption>) -> Self {
        Self {
            enabled: config.rate_limits_enabled,
            auth: (
                config.rate_limit_auth_per_second,
                f64::from(config.rate_limit_auth_burst.max(1)),
            ),
            send: (
                config.rate_limit_send_per_second,
                f64::from(config.rate_limit_send_burst.max(1)),
            ),
            action: (
                config.rate_limit_action_per_second,
                f64::from(config.rate_limit_action_burst.max(1)),
            ),
            ephemeral: (
                config.rate_limit_ephemeral_per_second,
                f64::from(config.rate_limit_ephemeral_burst.max(1)),
            ),
            buckets: Mutex::default(),
            exempt,
        }
    }

    /// Takes one token from the bucket of `(limit, key)`, or says how long to wait.
    pub fn check(&self, limit: Limit, key: &str) -> Result<()> {
        if limit != Limit::Webhook
            && (!self.enabled
                || self
                    .exempt
                    .as_ref()
                    .is_some_and(|f| key.starts_with('@') && f(key)))
        {
            return Ok(());
        }
        let (rate, burst) = match limit {
            Limit::Auth => self.auth,
            Limit::Send => self.send,
            Limit::CreateRoom | Limit::Membership | Limit::Profile | Limit::Report | Limit::Rtc => {
                self.action
            }
            Limit::Typing | Limit::Presence | Limit::ToDevice | Limit::DelayedEvents => {
                self.ephemeral
            }
            Limit::Webhook => WEBHOOK,
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() > 100_000 {
            buckets.retain(|_, (_, t)| now.duration_since(*t).as_secs() < 600);
        }
        let (tokens, last) = buckets
            .entry((limit, key.to_owned()))
            .or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - *tokens) / rate * 1000.0).ceil();
            Err(Error::limit_exceeded(if wait_ms.is_finite() {
                wait_ms as u64
            } else {
                1000
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited() {
        let config = Config {
            rate_limit_auth_burst: 3,
            rate_limit_auth_per_second: 0.1,
            ..Config::default()
        };
        let rl = RateLimiter::new(&config, None);
        for _ in 0..3 {
            rl.check(Limit::Auth, "1.2.3.4").unwrap();
        }
        let err = rl.check(Limit::Auth, "1.2.3.4").unwrap_err();
        assert!(
            matches!(err.kind(), Some(paracord_core::ErrorKind::LimitExceeded { retry_after_ms }) if *retry_after_ms > 0)
        );
        rl.check(Limit::Auth, "5.6.7.8").unwrap();
    }

    #[test]
    fn disabled_never_limits() {
        let config = Config {
            rate_limits_enabled: false,
            rate_limit_auth_burst: 1,
            ..Config::default()
        };
        let rl = RateLimiter::new(&config, None);
        for _ in 0..100 {
            rl.check(Limit::Auth, "x").unwrap();
        }
    }
}
