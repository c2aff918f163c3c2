#!/usr/bin/env python3
"""A real LiveKit participant (PyPI `livekit`, the Python binding of LiveKit's Rust SDK) or a
one-shot LiveKit server API call (PyPI `livekit-api`), driven by Paracord's black-box tests
(complement-tests/src/livekit.rs).

    livekit_peer.py peer     one participant; JSON-line commands on stdin, one JSON-line
                             answer on stdout per command, in order
    livekit_peer.py admin    one RoomService call: a JSON object on stdin, a JSON answer on
                             stdout

Every answer has `"ok": true` or `"ok": false` with `"error"` (a short code) and `"message"`
(what the SDK or the server said). Every wait has a deadline. Nothing but answers goes to
stdout: whatever else writes there (the SDK's native library, print) lands on stderr, which
the harness keeps in a log file.

Peer commands (`"cmd"`, then the fields named):
  connect {url, token, timeout}         -> {identity, room, permissions} or error
                                           connect_failed / timeout; `permissions` is what
                                           the server granted (can_publish, sources…)
  publish_audio {frequency, timeout}    -> {sid}: a sine wave, 48 kHz mono, as a microphone.
                                           A server that refuses answers NOT_ALLOWED, which
                                           livekit 1.2.1 ignores; it raises after its own
                                           10 s: error publish_failed ("track publication
                                           timed out, no response received from the server")
  publish_video {screen_share, width, height, fps, timeout}
                                        -> {sid}: frames of a changing solid colour, as a
                                           screen share (`screen_share`) or a camera
  wait_audio {from, frames, timeout}    -> {frames, sample_rate, channels, rms, peak, silent}:
                                           audio frames received from participant `from`
                                           after the command arrived (fewer on timeout)
  wait_video {from, frames, timeout}    -> {frames, width, height}: likewise for video
  participants {present, absent, timeout}
                                        -> {identity, remote, tracks}: once every identity
                                           in `present` is in the room and none of `absent`
                                           (or at the deadline: check the list)
  wait_disconnected {timeout}           -> {disconnected, reason}: `reason` is the SDK's
                                           DisconnectReason name (PARTICIPANT_REMOVED…)
  leave {}                              -> {}; then the process exits
After a failed connect the process answers and exits; end of stdin leaves the room and exits.

Admin commands ({"cmd", "url", "api_key", "api_secret", ...}):
  remove_participant {room, identity}   -> {}
  list_participants {room}              -> {participants: [{identity, tracks: [...]}]}
"""

import asyncio
import json
import logging
import math
import os
import sys
import time

# Answers go to a private copy of stdout; fd 1 itself now points at stderr.
_ANSWERS = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

import numpy  # noqa: E402  (a dependency of livekit)
from livekit import api, rtc  # noqa: E402  (after the redirection on purpose)
from livekit.rtc.participant import PublishTrackError  # noqa: E402

logging.basicConfig(
    stream=sys.stderr,
    level=logging.INFO,
    format="%(asctime)s %(name)s %(levelname)s %(message)s",
)
log = logging.getLogger("livekit_peer")

SAMPLE_RATE = 48000
FRAME_MS = 10
SILENCE_RMS = 0.01


def answer(obj):
    log.info("answer %s", json.dumps(obj)[:500])
    _ANSWERS.write(json.dumps(obj) + "\n")
    _ANSWERS.flush()


def ok(**fields):
    return {"ok": True, **fields}


def error(code, message):
    return {"ok": False, "error": code, "message": message}


def source_name(source):
    return rtc.TrackSource.Name(source).removeprefix("SOURCE_").lower()


def kind_name(kind):
    return rtc.TrackKind.Name(kind).removeprefix("KIND_").lower()


class Waiter:
    """Counts media frames from one participant until `wanted` arrive."""

    def __init__(self, wanted):
        self.wanted = wanted
        self.frames = 0
        self.done = asyncio.Event()
        self.sum_squares = 0.0
        self.samples = 0
        self.peak = 0.0
        self.sample_rate = 0
        self.channels = 0
        self.width = 0
        self.height = 0

    def counted(self):
        self.frames += 1
        if self.frames >= self.wanted:
            self.done.set()


class Peer:
    def __init__(self):
        self.room = None
        self.disconnected = None
        self.audio_waiters = {}
        self.video_waiters = {}
        self.tasks = set()
        self.changed = asyncio.Event()

    def spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def poke(self):
        self.changed.set()
        self.changed = asyncio.Event()

    # -- room events ----------------------------------------------------------------------

    def on_disconnected(self, reason):
        if self.disconnected is None:
            self.disconnected = rtc.DisconnectReason.Name(reason)
        self.poke()

    def on_track_subscribed(self, track, _publication, participant):
        identity = participant.identity
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self.spawn(self.read_audio(track, identity))
        elif track.kind == rtc.TrackKind.KIND_VIDEO:
            self.spawn(self.read_video(track, identity))

    async def read_audio(self, track, identity):
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        try:
            async for event in stream:
                waiters = self.audio_waiters.get(identity, [])
                if not waiters:
                    continue
                frame = event.frame
                samples = numpy.frombuffer(frame.data, dtype=numpy.int16).astype(numpy.float64)
                squares = float(numpy.dot(samples, samples))
                peak = float(numpy.abs(samples).max()) if samples.size else 0.0
                for w in waiters:
                    w.sum_squares += squares
                    w.samples += samples.size
                    w.peak = max(w.peak, peak / 32768.0)
                    w.sample_rate = frame.sample_rate
                    w.channels = frame.num_channels
                    w.counted()
        finally:
            await stream.aclose()

    async def read_video(self, track, identity):
        stream = rtc.VideoStream(track)
        try:
            async for event in stream:
                for w in self.video_waiters.get(identity, []):
                    w.width = event.frame.width
                    w.height = event.frame.height
                    w.counted()
        finally:
            await stream.aclose()

    # -- commands -------------------------------------------------------------------------

    async def connect(self, cmd):
        timeout = float(cmd.get("timeout", 15))
        room = rtc.Room()
        room.on("disconnected", self.on_disconnected)
        room.on("track_subscribed", self.on_track_subscribed)
        for event in ("participant_connected", "participant_disconnected",
                      "track_published", "track_unpublished"):
            room.on(event, lambda *_: self.poke())
        options = rtc.RoomOptions(auto_subscribe=True, connect_timeout=min(timeout, 10.0))
        try:
            await asyncio.wait_for(room.connect(cmd["url"], cmd["token"], options), timeout)
        except rtc.ConnectError as e:
            return error("connect_failed", str(e))
        except asyncio.TimeoutError:
            return error("timeout", f"not connected within {timeout} s")
        self.room = room
        granted = room.local_participant.permissions
        permissions = {
            "can_subscribe": granted.can_subscribe,
            "can_publish": granted.can_publish,
            "can_publish_data": granted.can_publish_data,
            "can_publish_sources": [source_name(s) for s in granted.can_publish_sources],
        }
        return ok(identity=room.local_participant.identity, room=room.name,
                  permissions=permissions)

    async def publish(self, track, source, timeout):
        options = rtc.TrackPublishOptions(source=source)
        try:
            publication = await asyncio.wait_for(
                self.room.local_participant.publish_track(track, options), timeout
            )
        except PublishTrackError as e:
            return None, error("publish_failed", e.message)
        except asyncio.TimeoutError:
            return None, error("timeout", f"track not published within {timeout} s")
        return publication, None

    async def publish_audio(self, cmd):
        timeout = float(cmd.get("timeout", 10))
        frequency = float(cmd.get("frequency", 440))
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=200)
        track = rtc.LocalAudioTrack.create_audio_track("sine", source)
        publication, failure = await self.publish(
            track, rtc.TrackSource.SOURCE_MICROPHONE, timeout
        )
        if failure:
            return failure
        self.spawn(self.sine(source, frequency))
        return ok(sid=publication.sid)

    async def sine(self, source, frequency):
        per_frame = SAMPLE_RATE * FRAME_MS // 1000
        n = 0
        while True:
            t = numpy.arange(n, n + per_frame) / SAMPLE_RATE
            wave = (16000 * numpy.sin(2 * math.pi * frequency * t)).astype(numpy.int16)
            frame = rtc.AudioFrame(wave.tobytes(), SAMPLE_RATE, 1, per_frame)
            n += per_frame
            await source.capture_frame(frame)

    async def publish_video(self, cmd):
        timeout = float(cmd.get("timeout", 10))
        width = int(cmd.get("width", 320))
        height = int(cmd.get("height", 240))
        fps = float(cmd.get("fps", 15))
        screen = bool(cmd.get("screen_share", True))
        video = rtc.VideoSource(width, height, is_screencast=screen)
        track = rtc.LocalVideoTrack.create_video_track("screen" if screen else "camera", video)
        kind = rtc.TrackSource.SOURCE_SCREENSHARE if screen else rtc.TrackSource.SOURCE_CAMERA
        # A first frame before publishing, so the encoder has something to send at once.
        self.capture(video, width, height, 0)
        publication, failure = await self.publish(track, kind, timeout)
        if failure:
            return failure
        self.spawn(self.colours(video, width, height, fps))
        return ok(sid=publication.sid, source=source_name(kind))

    @staticmethod
    def capture(video, width, height, n):
        # The colour changes every frame: a screen-share encoder skips unchanged frames.
        pixel = bytes(((n * 7) % 256, (n * 13) % 256, (n * 29) % 256, 255))
        frame = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, pixel * (width * height))
        video.capture_frame(frame)

    async def colours(self, video, width, height, fps):
        n = 1
        start = time.monotonic()
        while True:
            self.capture(video, width, height, n)
            n += 1
            await asyncio.sleep(max(0.0, start + n / fps - time.monotonic()))

    async def wait_frames(self, waiters, cmd):
        identity = cmd["from"]
        timeout = float(cmd.get("timeout", 10))
        waiter = Waiter(int(cmd.get("frames", 1)))
        waiters.setdefault(identity, []).append(waiter)
        try:
            await asyncio.wait_for(waiter.done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            waiters[identity].remove(waiter)
        return waiter

    async def wait_audio(self, cmd):
        w = await self.wait_frames(self.audio_waiters, cmd)
        rms = math.sqrt(w.sum_squares / w.samples) / 32768.0 if w.samples else 0.0
        return ok(frames=w.frames, sample_rate=w.sample_rate, channels=w.channels,
                  rms=rms, peak=w.peak, silent=rms < SILENCE_RMS)

    async def wait_video(self, cmd):
        w = await self.wait_frames(self.video_waiters, cmd)
        return ok(frames=w.frames, width=w.width, height=w.height)

    def snapshot(self):
        remote = self.room.remote_participants
        tracks = {
            identity: [
                {"sid": sid, "kind": kind_name(p.kind), "source": source_name(p.source),
                 "name": p.name}
                for sid, p in participant.track_publications.items()
            ]
            for identity, participant in remote.items()
        }
        return ok(identity=self.room.local_participant.identity,
                  remote=sorted(remote.keys()), tracks=tracks)

    async def participants(self, cmd):
        present = set(cmd.get("present", []))
        absent = set(cmd.get("absent", []))
        deadline = time.monotonic() + float(cmd.get("timeout", 0))
        while True:
            changed = self.changed
            here = set(self.room.remote_participants.keys())
            if present <= here and not (absent & here):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(changed.wait(), left)
            except asyncio.TimeoutError:
                break
        return self.snapshot()

    async def wait_disconnected(self, cmd):
        deadline = time.monotonic() + float(cmd.get("timeout", 10))
        while self.disconnected is None:
            changed = self.changed
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(changed.wait(), left)
            except asyncio.TimeoutError:
                break
        return ok(disconnected=self.disconnected is not None, reason=self.disconnected)

    async def leave(self, _cmd):
        await self.close()
        return ok()

    async def close(self):
        if self.room is not None and self.disconnected is None:
            try:
                await asyncio.wait_for(self.room.disconnect(), 5)
            except Exception as e:  # leaving is best effort; say why in the log
                log.warning("leave: %s: %s", type(e).__name__, e)
        for task in list(self.tasks):
            task.cancel()


COMMANDS = {
    "publish_audio": Peer.publish_audio,
    "publish_video": Peer.publish_video,
    "wait_audio": Peer.wait_audio,
    "wait_video": Peer.wait_video,
    "participants": Peer.participants,
    "wait_disconnected": Peer.wait_disconnected,
    "leave": Peer.leave,
}


async def stdin_lines():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def run_peer():
    reader = await stdin_lines()
    peer = Peer()
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                cmd = json.loads(line)
                name = cmd["cmd"]
                log.info("command %s", {k: v for k, v in cmd.items() if k != "token"})
            except (ValueError, KeyError, TypeError) as e:
                answer(error("bad_command", f"{type(e).__name__}: {e}"))
                continue
            if name == "connect":
                if peer.room is not None:
                    answer(error("bad_command", "already connected"))
                    continue
                result = await peer.connect(cmd)
                answer(result)
                if not result["ok"]:
                    return
                continue
            handler = COMMANDS.get(name)
            if handler is None:
                answer(error("bad_command", f"unknown command {name!r}"))
            elif peer.room is None:
                answer(error("not_connected", "connect first"))
            else:
                try:
                    answer(await handler(peer, cmd))
                except Exception as e:
                    answer(error("failed", f"{type(e).__name__}: {e}"))
                if name == "leave":
                    return
    finally:
        await peer.close()


async def run_admin():
    cmd = json.loads(sys.stdin.read())
    timeout = float(cmd.get("timeout", 10))
    lk = api.LiveKitAPI(cmd["url"], cmd["api_key"], cmd["api_secret"])
    try:
        if cmd["cmd"] == "remove_participant":
            await asyncio.wait_for(
                lk.room.remove_participant(
                    api.RoomParticipantIdentity(room=cmd["room"], identity=cmd["identity"])
                ),
                timeout,
            )
            return ok()
        if cmd["cmd"] == "list_participants":
            listed = await asyncio.wait_for(
                lk.room.list_participants(api.ListParticipantsRequest(room=cmd["room"])),
                timeout,
            )
            return ok(participants=[
                {"identity": p.identity,
                 "tracks": [{"sid": t.sid, "source": api.TrackSource.Name(t.source).lower(),
                             "muted": t.muted}
                            for t in p.tracks]}
                for p in listed.participants
            ])
        if cmd["cmd"] == "list_rooms":
            listed = await asyncio.wait_for(
                lk.room.list_rooms(api.ListRoomsRequest()), timeout
            )
            return ok(rooms=[r.name for r in listed.rooms])
        return error("bad_command", f"unknown command {cmd['cmd']!r}")
    except asyncio.TimeoutError:
        return error("timeout", f"no answer within {timeout} s")
    except api.ServerError as e:
        return error("server_error", f"{e.code}: {e.message} (HTTP {e.status})")
    finally:
        await lk.aclose()


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "peer"
    if mode == "peer":
        asyncio.run(run_peer())
    elif mode == "admin":
        answer(asyncio.run(run_admin()))
    else:
        answer(error("bad_command", f"unknown mode {mode!r}"))
        sys.exit(2)


if __name__ == "__main__":
    main()
