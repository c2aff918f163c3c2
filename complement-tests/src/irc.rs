//! A small IRC client over raw TCP, playing an IRC user in bridge tests (with
//! [`crate::ngircd::Ngircd`] as the server): registers, joins, sends, and waits with deadlines
//! for the lines it expects, answering PINGs on the way.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

/// How long [`IrcClient::wait_for`] and friends wait.
pub const IRC_WAIT: Duration = Duration::from_secs(30);

/// One line from the server.
#[derive(Debug, Clone)]
pub struct Msg {
    /// The line without `\r\n`.
    pub raw: String,
    /// The nick of the prefix (`nick!user@host`), or the server name, or empty.
    pub nick: String,
    /// `PRIVMSG`, `JOIN`, `001`…
    pub command: String,
    /// The parameters, the trailing one last.
    pub params: Vec<String>,
}

impl Msg {
    fn parse(raw: &str) -> Msg {
        let raw = raw.trim_end_matches(['\r', '\n']).to_owned();
        let mut rest = raw.as_str();
        let mut nick = String::new();
        if let Some(p) = rest.strip_prefix(':') {
            let (prefix, r) = p.split_once(' ').unwrap_or((p, ""));
            nick = prefix.split('!').next().unwrap_or_default().to_owned();
            rest = r;
        }
        let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut params = Vec::new();
        while !rest.is_empty() {
            if let Some(t) = rest.strip_prefix(':') {
                params.push(t.to_owned());
                break;
            }
            let (p, r) = rest.split_once(' ').unwrap_or((rest, ""));
            params.push(p.to_owned());
            rest = r;
        }
        Msg {
            raw: raw.clone(),
            nick,
            command: command.to_owned(),
            params,
        }
    }

    /// Parameter `i`, or `""`.
    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).map_or("", String::as_str)
    }
}

/// A registered connection to an IRC server on loopback.
pub struct IrcClient {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    /// Its nick (update it after sending a `NICK`).
    pub nick: String,
    /// Every line received, in order.
    pub seen: Vec<Msg>,
}

impl IrcClient {
    /// Connects and registers as `nick`.
    pub async fn connect(port: u16, nick: &str) -> IrcClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("expected to connect to ngircd on {port}: {e}"));
        let (read, write) = stream.into_split();
        let mut client = IrcClient {
            read: BufReader::new(read),
            write,
            nick: nick.to_owned(),
            seen: Vec::new(),
        };
        let user: String = nick.chars().filter(char::is_ascii_alphanumeric).collect();
        client
            .send(&format!("NICK {nick}\r\nUSER {user} 0 * :test user"))
            .await;
        client
            .wait_for("the welcome (001)", |m| m.command == "001")
            .await;
        client
    }

    /// Sends raw lines (`\r\n` added at the end).
    pub async fn send(&mut self, lines: &str) {
        self.write
            .write_all(format!("{lines}\r\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("expected to write to ngircd: {e}"));
    }

    /// Joins `channel` and waits for the server's confirmation.
    pub async fn join(&mut self, channel: &str) {
        self.send(&format!("JOIN {channel}")).await;
        let me = self.nick.clone();
        self.wait_for("our own JOIN", |m| {
            m.command == "JOIN" && m.nick == me && m.param(0).eq_ignore_ascii_case(channel)
        })
        .await;
    }

    /// Sends a `PRIVMSG`.
    pub async fn privmsg(&mut self, target: &str, text: &str) {
        self.send(&format!("PRIVMSG {target} :{text}")).await;
    }

    /// The next line (answering PINGs on the way); `None` after `deadline`.
    async fn next(&mut self, deadline: Instant) -> Option<Msg> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut line = Vec::new();
            match tokio::time::timeout(left, self.read.read_until(b'\n', &mut line)).await {
                Err(_) => return None,
                Ok(Ok(0)) => panic!("ngircd closed the connection of {}", self.nick),
                Ok(Err(e)) => panic!("reading from ngircd: {e}"),
                Ok(Ok(_)) => {}
            }
            let msg = Msg::parse(&String::from_utf8_lossy(&line));
            if msg.command == "PING" {
                let pong = format!("PONG :{}", msg.param(0));
                self.send(&pong).await;
                continue;
            }
            self.seen.push(msg.clone());
            return Some(msg);
        }
    }

    /// Reads until a line satisfies `pred`, within [`IRC_WAIT`].
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + IRC_WAIT;
        loop {
            match self.next(deadline).await {
                Some(m) if pred(&m) => return m,
                Some(_) => {}
                None => panic!(
                    "{} expected {what} within {IRC_WAIT:?}; got:\n{}",
                    self.nick,
                    self.seen
                        .iter()
                        .rev()
                        .take(30)
                        .rev()
                        .map(|m| m.raw.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    /// Reads whatever arrives for `wait`, returning it.
    pub async fn drain(&mut self, wait: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(m) = self.next(deadline).await {
            out.push(m);
        }
        out
    }

    /// Waits until `nick` is in `channel`, asking with NAMES every second.
    pub async fn wait_for_member(&mut self, channel: &str, nick: &str) {
        let deadline = Instant::now() + IRC_WAIT;
        loop {
            self.send(&format!("NAMES {channel}")).await;
            let until = Instant::now() + Duration::from_secs(1);
            while let Some(m) = self.next(until).await {
                let listed = m.command == "353"
                    && m.param(3)
                        .split(' ')
                        .any(|n| n.trim_start_matches(['@', '+']).eq_ignore_ascii_case(nick));
                let joined = m.command == "JOIN" && m.nick.eq_ignore_ascii_case(nick);
                if listed || joined {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} expected {nick} in {channel} within {IRC_WAIT:?}",
                self.nick
            );
        }
    }
}
