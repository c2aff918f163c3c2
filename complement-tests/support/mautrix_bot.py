"""A small application service written on the mautrix framework (PyPI `mautrix` 0.21), run
unmodified against Paracord by complement-tests/tests/it/real_bridges.rs.

Usage: python mautrix_bot.py CONFIG.json — the config names the homeserver URL, the server
name, the tokens, the appservice id, the bot's localpart, the port to listen on and a state
file. What it does, each through mautrix's own code paths:

- the bot joins every room it is invited to;
- `!echo TEXT` from a user: the ghost `@mautrix_echo` (registered through an intent, display
  name "Echo Ghost") is invited by the bot, joins and answers `echo: TEXT`;
- typing notifications (MSC2409 ephemeral events): the bot says `typing: USER` once per user;
- to-device events (MSC2409/MSC3202, `de.sorunome.msc2409.to_device`): the bot says
  `to-device: TYPE from SENDER` in the room named by the event's content `room_id`;
- user queries: any `@mautrix_…` user exists (registered with the display name "Queried");
- alias queries: `#mautrix_NAME` is created on demand as a public room named NAME.

Prints READY once it listens.
"""

import asyncio
import json
import logging
import sys

from mautrix.appservice import AppService
from mautrix.appservice.state_store import FileASStateStore
from mautrix.types import (
    EventType,
    MessageType,
    Membership,
    RoomAlias,
    RoomCreatePreset,
    StateEvent,
    TextMessageEventContent,
    UserID,
)


async def main() -> None:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    domain = config["domain"]
    prefix = "mautrix_"
    typing_seen: set[str] = set()
    az: AppService

    async def query_user(user_id: UserID) -> bool:
        localpart = user_id[1:].split(":", 1)[0]
        if not localpart.startswith(prefix):
            return False
        intent = az.intent.user(user_id)
        await intent.ensure_registered()
        await intent.set_displayname("Queried")
        return True

    async def query_alias(alias: RoomAlias) -> bool:
        localpart = alias[1:].split(":", 1)[0]
        if not localpart.startswith(prefix):
            return False
        name = localpart[len(prefix):]
        await az.intent.create_room(
            alias_localpart=localpart,
            preset=RoomCreatePreset.PUBLIC,
            name=name,
        )
        return True

    az = AppService(
        server=config["homeserver"],
        domain=domain,
        as_token=config["as_token"],
        hs_token=config["hs_token"],
        bot_localpart=config["bot_localpart"],
        id=config["id"],
        query_user=query_user,
        query_alias=query_alias,
        state_store=FileASStateStore(config["state"], binary=False),
        ephemeral_events=True,
        encryption_events=True,
    )

    # mautrix's event loop hands every event to every handler; each one picks its own.
    async def on_event(evt) -> None:
        if evt.type == EventType.ROOM_MEMBER and isinstance(evt, StateEvent):
            if evt.state_key == az.bot_mxid and evt.content.membership == Membership.INVITE:
                await az.intent.join_room(evt.room_id)
            return
        if evt.type == EventType.ROOM_MESSAGE:
            if evt.sender.startswith(f"@{prefix}") or evt.sender == az.bot_mxid:
                return
            body = evt.content.body or ""
            if body.startswith("!echo "):
                ghost = az.intent.user(UserID(f"@{prefix}echo:{domain}"))
                await ghost.ensure_registered()
                await ghost.set_displayname("Echo Ghost")
                await az.intent.invite_user(evt.room_id, ghost.mxid)
                await ghost.join_room(evt.room_id)
                await ghost.send_message(
                    evt.room_id,
                    TextMessageEventContent(msgtype=MessageType.TEXT, body="echo: " + body[6:]),
                )
            return
        if evt.type == EventType.TYPING:
            for user in evt.content.user_ids:
                if user != az.bot_mxid and user not in typing_seen:
                    typing_seen.add(user)
                    await az.intent.send_notice(evt.room_id, f"typing: {user}")

    async def on_to_device(evt) -> None:
        content = evt.content.serialize() if hasattr(evt.content, "serialize") else {}
        room_id = content.get("room_id")
        if room_id:
            await az.intent.send_notice(room_id, f"to-device: {evt.type.t} from {evt.sender}")

    az.matrix_event_handler(on_event)
    az.to_device_handler = on_to_device
    await az.start(host="127.0.0.1", port=int(config["port"]))
    await az.intent.ensure_registered()
    await az.intent.set_displayname("mautrix bot")
    # A device for the bot (MSC4190), so to-device messages have somewhere to go.
    await az.intent.create_device_msc4190(config["device_id"], "mautrix bot")
    print("READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stdout, level=logging.INFO)
    asyncio.run(main())
