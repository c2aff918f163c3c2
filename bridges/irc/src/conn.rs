//! One IRC client connection on tokio, kept alive: registration (PASS/NICK/USER, another
//! nick on `433`), PING/PONG, the channels it should be in (joined again after every
//! reconnect), and reconnection with exponential backoff. Commands sent while it is
//! disconnected wait and go out, in order, once it is back.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    io::{
        AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, WriteHalf,
    },
    net::TcpStream,
    sync::mpsc,
    time::Instant,
};

use crate::proto::{alternative_nick, clean, irc_lower, split_message, text_budget, Line};

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After this long without a line from the server, the client sends a PING…
const IDLE_PING: Duration = Duration::from_secs(90);
/// …and after this long it gives the connection up and reconnects.
const IDLE_DEAD: Duration = Duration::from_secs(150);
/// The longest line read from a server (IRCv3 tags make lines longer than 512 bytes).
const MAX_READ_LINE: usize = 8192;
/// How many other nicks registration tries before giving up on this attempt.
const NICK_ATTEMPTS: u32 = 50;
/// Flood control: lines that may go out at once…
const BURST: f64 = 5.0;
/// …and then one line per this long (servers throttle or disconnect faster clients).
const LINE_INTERVAL: Duration = Duration::from_millis(500);

/// A token bucket for the lines a connection sends.
#[derive(Debug)]
struct Pace {
    tokens: f64,
    last: Instant,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            tokens: BURST,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let gained = (now - self.last).as_secs_f64() / LINE_INTERVAL.as_secs_f64();
        self.tokens = (self.tokens + gained).min(BURST);
        self.last = now;
    }

    /// Takes a token if there is one.
    fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there.
    fn next_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.last + LINE_INTERVAL.mul_f64(missing)
    }
}

/// A connection to the server, plain or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How to speak TLS to the server.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    /// The name the certificate must carry (the configured host).
    pub(crate) server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({:?})", self.server_name)
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub(crate) struct ConnConfig {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<Tls>,
    pub(crate) password: Option<String>,
    pub(crate) nick: String,
    pub(crate) username: String,
    pub(crate) realname: String,
    pub(crate) max_nick_len: usize,
    pub(crate) reconnect_initial: Duration,
    pub(crate) reconnect_max: Duration,
}

/// What a connection reports.
#[derive(Debug, Clone)]
pub(crate) enum IrcEvent {
    /// Registered (after `001`) with this nick; the wanted channels are being joined.
    Connected { nick: String },
    /// The connection was lost; a reconnect is scheduled.
    Disconnected { reason: String },
    /// Any other line from the server.
    Line(Line),
}

#[derive(Debug)]
enum Command {
    Join(String),
    Part(String, String),
    Message(&'static str, String, String),
    Nick(String),
    Quit(String),
}

#[derive(Debug, Default)]
struct Shared {
    nick: String,
    registered: bool,
    /// Channels to be in: lower-cased name → name as given.
    wanted: BTreeMap<String, String>,
    /// Channels the server confirmed (lower-cased).
    joined: BTreeSet<String>,
    stopped: bool,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handle on a running connection; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct IrcHandle {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Mutex<Shared>>,
}

impl IrcHandle {
    /// Starts the connection task. Events go to `events` (dropped when `None`).
    pub(crate) fn spawn(
        config: ConnConfig,
        channels: impl IntoIterator<Item = String>,
        events: Option<mpsc::UnboundedSender<IrcEvent>>,
    ) -> IrcHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(Shared {
            nick: config.nick.clone(),
            wanted: channels.into_iter().map(|c| (irc_lower(&c), c)).collect(),
            ..Shared::default()
        }));
        tokio::spawn(run(config, shared.clone(), rx, events));
        IrcHandle { tx, shared }
    }

    /// The nick the server knows this connection by.
    pub(crate) fn nick(&self) -> String {
        lock(&self.shared).nick.clone()
    }

    /// Whether the server confirmed the connection is in `channel`.
    pub(crate) fn in_channel(&self, channel: &str) -> bool {
        lock(&self.shared).joined.contains(&irc_lower(channel))
    }

    /// The channels it should be in.
    pub(crate) fn wanted_channels(&self) -> Vec<String> {
        lock(&self.shared).wanted.values().cloned().collect()
    }

    /// Joins `channel` (now, and after every reconnect).
    pub(crate) fn join(&self, channel: &str) {
        lock(&self.shared)
            .wanted
            .insert(irc_lower(channel), channel.to_owned());
        let _ = self.tx.send(Command::Join(channel.to_owned()));
    }

    /// Leaves `channel`.
    pub(crate) fn part(&self, channel: &str, reason: &str) {
        lock(&self.shared).wanted.remove(&irc_lower(channel));
        let _ = self
            .tx
            .send(Command::Part(channel.to_owned(), reason.to_owned()));
    }

    /// Sends a PRIVMSG, split into lines that fit.
    pub(crate) fn privmsg(&self, target: &str, text: &str) {
        let _ = self
            .tx
            .send(Command::Message("PRIVMSG", target.into(), text.into()));
    }

    /// Sends a NOTICE, split into lines that fit.
    pub(crate) fn notice(&self, target: &str, text: &str) {
        let _ = self
            .tx
            .send(Command::Message("NOTICE", target.into(), text.into()));
    }

    /// Sends a CTCP ACTION (`/me`), split into lines that fit.
    pub(crate) fn action(&self, target: &str, text: &str) {
        let _ = self
            .tx
            .send(Command::Message("ACTION", target.into(), text.into()));
    }

    /// Asks for another nick.
    pub(crate) fn change_nick(&self, nick: &str) {
        let _ = self.tx.send(Command::Nick(nick.to_owned()));
    }

    /// Quits and stops reconnecting.
    pub(crate) fn quit(&self, reason: &str) {
        lock(&self.shared).stopped = true;
        let _ = self.tx.send(Command::Quit(reason.to_owned()));
    }

    /// Waits until the server confirmed `channel`, up to `timeout`; whether it did.
    pub(crate) async fn wait_in_channel(&self, channel: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.in_channel(channel) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// How a session ended.
enum End {
    Quit,
    Lost { registered: bool, reason: String },
}

async fn run(
    config: ConnConfig,
    shared: Arc<Mutex<Shared>>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    events: Option<mpsc::UnboundedSender<IrcEvent>>,
) {
    let emit = |e: IrcEvent| {
        if let Some(tx) = &events {
            let _ = tx.send(e);
        }
    };
    let mut pending: VecDeque<Command> = VecDeque::new();
    let mut backoff = config.reconnect_initial;
    loop {
        if lock(&shared).stopped && pending.is_empty() && rx.is_empty() {
            return;
        }
        let end = session(&config, &shared, &mut rx, &mut pending, &emit).await;
        {
            let mut s = lock(&shared);
            s.registered = false;
            s.joined.clear();
        }
        let (registered, reason) = match end {
            End::Quit => return,
            End::Lost { registered, reason } => (registered, reason),
        };
        if lock(&shared).stopped {
            return;
        }
        if registered {
            backoff = config.reconnect_initial;
        }
        tracing::info!(
            nick = %config.nick,
            "IRC connection lost ({reason}); reconnecting in {backoff:?}"
        );
        emit(IrcEvent::Disconnected { reason });
        // Wait, keeping what is asked meanwhile; a quit ends it.
        let wake = Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                cmd = rx.recv() => match cmd {
                    None | Some(Command::Quit(_)) => return,
                    Some(cmd) => pending.push_back(cmd),
                },
            }
        }
        backoff = (backoff * 2).min(config.reconnect_max);
    }
}

async fn session(
    config: &ConnConfig,
    shared: &Mutex<Shared>,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    pending: &mut VecDeque<Command>,
    emit: &impl Fn(IrcEvent),
) -> End {
    let lost = |registered: bool, reason: String| End::Lost { registered, reason };
    let stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((config.host.as_str(), config.port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return lost(false, format!("connect: {e}")),
        Err(_) => return lost(false, "connect: timed out".into()),
    };
    let stream: Box<dyn Io> = match &config.tls {
        None => Box::new(stream),
        Some(tls) => {
            let handshake = tls.connector.connect(tls.server_name.clone(), stream);
            match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => return lost(false, format!("TLS: {e}")),
                Err(_) => return lost(false, "TLS: timed out".into()),
            }
        }
    };
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let mut nick = config.nick.clone();
    let mut hello = String::new();
    if let Some(pass) = &config.password {
        hello.push_str(&format!("PASS {}\r\n", clean(pass)));
    }
    hello.push_str(&format!(
        "NICK {nick}\r\nUSER {} 0 * :{}\r\n",
        clean(&config.username),
        clean(&config.realname)
    ));
    if let Err(e) = write.write_all(hello.as_bytes()).await {
        return lost(false, format!("write: {e}"));
    }
    let mut registered = false;
    let mut attempt = 0u32;
    let mut buf = Vec::new();
    let mut last_seen = Instant::now();
    let mut pinged = false;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    // Lines of commands, sent at the pace of `pace`; protocol answers go out at once.
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut pace = Pace::new();
    loop {
        let mut out = String::new();
        let mut queued = String::new();
        // At most this much of a line per read; `buf` keeps what a cancelled read had.
        let mut limited = (&mut read).take(MAX_READ_LINE as u64);
        tokio::select! {
            read_result = limited.read_until(b'\n', &mut buf) => {
                match read_result {
                    Ok(0) => return lost(registered, "closed by the server".into()),
                    Err(e) => return lost(registered, format!("read: {e}")),
                    Ok(_) => {}
                }
                if !buf.ends_with(b"\n") {
                    if buf.len() >= MAX_READ_LINE {
                        return lost(registered, "a line longer than 8 KiB".into());
                    }
                    continue;
                }
                last_seen = Instant::now();
                pinged = false;
                let text = String::from_utf8_lossy(&buf).into_owned();
                buf.clear();
                let Some(line) = Line::parse(&text) else { continue };
                match line.command.as_str() {
                    "PING" => out.push_str(&format!("PONG :{}\r\n", line.param(0))),
                    "001" => {
                        registered = true;
                        nick = line.param(0).to_owned();
                        let wanted: Vec<String> = {
                            let mut s = lock(shared);
                            s.nick = nick.clone();
                            s.registered = true;
                            s.wanted.values().cloned().collect()
                        };
                        for channel in wanted {
                            queued.push_str(&format!("JOIN {}\r\n", clean(&channel)));
                        }
                        while let Some(cmd) = pending.pop_front() {
                            if let Some(End::Quit) = write_command(&mut queued, cmd, shared, &nick) {
                                return quit(&mut write, queue, &queued).await;
                            }
                        }
                        emit(IrcEvent::Connected { nick: nick.clone() });
                    }
                    "432" | "433" | "436" | "437" if !registered => {
                        attempt += 1;
                        if attempt > NICK_ATTEMPTS {
                            return lost(false, "no free nick".into());
                        }
                        nick = alternative_nick(&config.nick, attempt, config.max_nick_len);
                        out.push_str(&format!("NICK {nick}\r\n"));
                    }
                    "JOIN" | "PART" | "KICK" | "NICK" => {
                        track_self(shared, &line, &mut nick);
                        emit(IrcEvent::Line(line));
                    }
                    _ => emit(IrcEvent::Line(line)),
                }
            }
            cmd = rx.recv(), if registered => {
                let Some(cmd) = cmd else {
                    let _ = write.write_all(b"QUIT :bridge stopping\r\n").await;
                    return End::Quit;
                };
                if let Some(End::Quit) = write_command(&mut queued, cmd, shared, &nick) {
                    return quit(&mut write, queue, &queued).await;
                }
            }
            _ = tokio::time::sleep_until(pace.next_at()), if !queue.is_empty() => {}
            _ = tick.tick() => {
                let idle = last_seen.elapsed();
                if idle > IDLE_DEAD {
                    return lost(registered, "no answer to PING".into());
                }
                if idle > IDLE_PING && !pinged {
                    pinged = true;
                    out.push_str("PING :keepalive\r\n");
                }
            }
        }
        queue.extend(queued.split_terminator("\r\n").map(str::to_owned));
        while !queue.is_empty() && pace.take() {
            if let Some(line) = queue.pop_front() {
                out.push_str(&line);
                out.push_str("\r\n");
            }
        }
        if !out.is_empty() {
            if let Err(e) = write.write_all(out.as_bytes()).await {
                return lost(registered, format!("write: {e}"));
            }
        }
    }
}

/// Sends what is still queued and then the QUIT, without waiting for the pace.
async fn quit(write: &mut WriteHalf<Box<dyn Io>>, queue: VecDeque<String>, last: &str) -> End {
    let mut out: String = queue.into_iter().map(|l| l + "\r\n").collect();
    out.push_str(last);
    let _ = write.write_all(out.as_bytes()).await;
    let _ = write.flush().await;
    End::Quit
}

/// Updates the connection's own nick and channels from a JOIN, PART, KICK or NICK.
fn track_self(shared: &Mutex<Shared>, line: &Line, nick: &mut String) {
    let me = irc_lower(nick);
    let from_me = line.nick().map(irc_lower).as_deref() == Some(me.as_str());
    let mut s = lock(shared);
    match line.command.as_str() {
        "JOIN" if from_me => {
            s.joined.insert(irc_lower(line.param(0)));
        }
        "PART" if from_me => {
            s.joined.remove(&irc_lower(line.param(0)));
        }
        "KICK" if irc_lower(line.param(1)) == me => {
            s.joined.remove(&irc_lower(line.param(0)));
        }
        "NICK" if from_me => {
            *nick = line.param(0).to_owned();
            s.nick = nick.clone();
        }
        _ => {}
    }
}

/// Appends a command's lines to `out`; `Some(End::Quit)` for a quit.
fn write_command(
    out: &mut String,
    cmd: Command,
    shared: &Mutex<Shared>,
    nick: &str,
) -> Option<End> {
    match cmd {
        Command::Join(channel) => out.push_str(&format!("JOIN {}\r\n", clean(&channel))),
        Command::Part(channel, reason) => {
            lock(shared).joined.remove(&irc_lower(&channel));
            out.push_str(&format!("PART {} :{}\r\n", clean(&channel), clean(&reason)));
        }
        Command::Nick(new) => out.push_str(&format!("NICK {}\r\n", clean(&new))),
        Command::Message(kind, target, text) => {
            let target = clean(&target);
            let (command, wrap) = match kind {
                "ACTION" => ("PRIVMSG", true),
                other => (other, false),
            };
            // `\x01ACTION …\x01` takes 9 bytes of the line.
            let budget = text_budget(command, &target, nick) - if wrap { 9 } else { 0 };
            for piece in split_message(&text, budget) {
                let piece = clean(&piece);
                if wrap {
                    out.push_str(&format!("{command} {target} :\x01ACTION {piece}\x01\r\n"));
                } else {
                    out.push_str(&format!("{command} {target} :{piece}\r\n"));
                }
            }
        }
        Command::Quit(reason) => {
            out.push_str(&format!("QUIT :{}\r\n", clean(&reason)));
            return Some(End::Quit);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_into_lines_under_the_limit() {
        let shared = Mutex::new(Shared::default());
        let mut out = String::new();
        let text = "ünïcödé ".repeat(200);
        write_command(
            &mut out,
            Command::Message("PRIVMSG", "#chan".into(), text.clone()),
            &shared,
            "alice",
        );
        let lines: Vec<&str> = out.split_terminator("\r\n").collect();
        assert!(lines.len() > 3);
        let mut joined = Vec::new();
        for line in &lines {
            // Room left for the relay's `:alice!user@host ` prefix.
            assert!(line.len() + 2 + ":alice!".len() + 80 <= crate::proto::MAX_LINE);
            joined.push(line.strip_prefix("PRIVMSG #chan :").unwrap());
        }
        assert_eq!(joined.join(" ").trim_end(), text.trim_end());

        let mut out = String::new();
        write_command(
            &mut out,
            Command::Message("ACTION", "#chan".into(), "waves".into()),
            &shared,
            "alice",
        );
        assert_eq!(out, "PRIVMSG #chan :\x01ACTION waves\x01\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn lines_go_out_in_a_burst_then_at_a_pace() {
        let mut pace = Pace::new();
        for _ in 0..5 {
            assert!(pace.take());
        }
        assert!(!pace.take());
        let wait = pace.next_at() - Instant::now();
        assert!(
            wait <= LINE_INTERVAL && wait > LINE_INTERVAL / 2,
            "{wait:?}"
        );
        tokio::time::advance(LINE_INTERVAL).await;
        assert!(pace.take());
        assert!(!pace.take());
        tokio::time::advance(LINE_INTERVAL * 20).await;
        for _ in 0..5 {
            assert!(pace.take());
        }
        assert!(!pace.take());
    }

    #[test]
    fn tracks_its_own_joins_parts_and_nick() {
        let shared = Mutex::new(Shared::default());
        let mut nick = "me".to_owned();
        let line = |s: &str| Line::parse(s).unwrap();
        track_self(&shared, &line(":ME!u@h JOIN #Chan"), &mut nick);
        assert!(lock(&shared).joined.contains("#chan"));
        track_self(&shared, &line(":other!u@h JOIN #two"), &mut nick);
        assert!(!lock(&shared).joined.contains("#two"));
        track_self(&shared, &line(":me!u@h NICK :me2"), &mut nick);
        assert_eq!(nick, "me2");
        track_self(&shared, &line(":op!u@h KICK #chan me2 :bye"), &mut nick);
        assert!(lock(&shared).joined.is_empty());
    }
}
