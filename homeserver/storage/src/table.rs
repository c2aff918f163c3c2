//! The catalogue of column families. Each name says `<key>_<value>`.

/// A table (column family). The name is its on-disk identity; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Fixed-name global values (stream position, id counters, server facts).
    GlobalValue,
    /// `user_id` → account record (password hash, admin, deactivated, profile).
    UseridAccount,
    /// sha256(token) → session (user, device, kind, expiry).
    TokenhashSession,
    /// `user_id 0xFF device_id` → device record.
    UserdeviceDevice,
    /// `user_id 0xFF device_id 0xFF room_id 0xFF txn_id` → event id.
    TxnEventid,
    /// `event_id` → short event id (u64 big-endian).
    EventidShorteventid,
    /// short event id → the PDU as canonical JSON.
    ShorteventidPdu,
    /// short event id → event metadata (room, stream position, state before it, outcome).
    ShorteventidMeta,
    /// `room_id` → room record (version, forward extremities, current state snapshot, ...).
    RoomidRoom,
    /// `room_id 0xFF stream_pos` → short event id: the room's timeline in stream order.
    RoompositionShorteventid,
    /// `room_id 0xFF origin_server_ts (u64) stream_pos (u64)` → short event id: the same
    /// timeline by the events' timestamps (`/timestamp_to_event`).
    RoomtsposShorteventid,
    /// snapshot id → state snapshot (parent snapshot plus the entries that changed).
    SnapshotidState,
    /// `user_id 0xFF room_id` → the user's membership in the room and its stream position.
    UserroomMembership,
    /// `room_id 0xFF user_id` → membership string, for member lists.
    RoomuserMembership,
    /// `event_id` → why it was rejected: remote events that failed their checks, kept so they
    /// are not fetched and checked again.
    EventidRejected,
    /// `origin 0xFF txn_id` → the answer to an incoming federation transaction (idempotency).
    OrigintxnResponse,
    /// `user_id 0xFF room_id` → an invite from another server: the signed invite event and the
    /// stripped state it came with.
    UserroomRemoteinvite,
    /// room alias → room id.
    AliasRoomid,
    /// `room_id` → "" for rooms published in the public room directory.
    RoomidPublished,
    /// `user_id 0xFF room_id-or-empty 0xFF type` → account data content and stream position.
    UserroomtypeAccountdata,
    /// `user_id 0xFF filter_id` → filter JSON.
    UserfilterFilter,
    /// `room_id 0xFF receipt_type 0xFF user_id 0xFF thread` → receipt.
    RoomreceiptReceipt,
    /// `user_id` → presence record.
    UseridPresence,
    /// `user_id` → the user's name and avatar in the user directory.
    UseridDirectory,
    /// `target short id, rel_type 0xFF, child stream position` → child short id.
    TargetrelposShorteventid,
    /// `target short id, annotation key 0xFF sender` → the annotation's stream position: who
    /// reacted to an event with which key, without reading its reactions.
    TargetkeysenderPos,
    /// `room_id 0xFF thread root short id` → stream position of the thread's newest event.
    RoomthreadLatest,
    /// thread root short id → how many replies (`m.thread` relations) the index holds for it.
    RootThreadcount,
    /// `timestamp, random id` → a report of a room, event or user, for the admins.
    ReportidReport,
    /// sha256(OpenID token) → the user it vouches for and its expiry.
    OpenidtokenSession,
    /// `user_id 0xFF stream_pos` → a notification (room, event, highlight, actions).
    UserposNotification,
    /// `user_id 0xFF room_id 0xFF stream_pos` → 1 if the notification highlights, else 0.
    UserroomposHighlight,
    /// `user_id 0xFF app_id 0xFF pushkey` → pusher.
    UserapppushkeyPusher,
    /// media id → media metadata (content hash, type, name, size, uploader).
    MediaidMedia,
    /// `origin 0xFF access stamp (u64) media_id` → size (u64): another server's media cached
    /// here, least recently used first.
    OriginaccessMedia,
    /// `origin` → bytes (u64) of that server's media cached here.
    OriginCachebytes,
    // key backup
    /// `user_id 0xFF version (u64)` → backup version record (algorithm, auth_data, etag,
    /// count, deleted).
    UserversionBackup,
    /// `user_id 0xFF version (u64) room_id 0xFF session_id` → the backed-up session key.
    UserversionroomsessionRoomkey,
    // end-to-end encryption keys and to-device messages
    /// `user_id 0xFF device_id` → the device's signed identity keys, as uploaded.
    UserdeviceDevicekeys,
    /// `user_id 0xFF device_id 0xFF algorithm 0xFF upload sequence (u64)` → a one-time key
    /// and its id: keys are handed out in upload order.
    UserdevicealgseqOnetimekey,
    /// `user_id 0xFF device_id 0xFF algorithm` → the fallback key and whether it was used.
    UserdevicealgFallbackkey,
    /// `user_id 0xFF usage` (master, self_signing, user_signing) → cross-signing key JSON.
    UserusageCrosssigningkey,
    /// `target user 0xFF target key id 0xFF signer user 0xFF signer key id` → signature,
    /// uploaded after the key itself (`/keys/signatures/upload`).
    TargetsignerSignature,
    /// `stream_pos user_id` → "": the user's device list or cross-signing keys changed.
    PositionuserKeychange,
    /// `user_id 0xFF device_id 0xFF stream_pos seq` → a to-device message awaiting delivery.
    UserdeviceposTodevice,
    /// `user_id 0xFF device_id 0xFF txn_id` → "": to-device transactions already accepted.
    UserdevicetxnTodevice,
    /// `user_id` → the user's dehydrated device (MSC3814): device id and its opaque data.
    UseridDehydrateddevice,
    // full-text search
    /// `token 0xFF room_id 0xFF stream_pos` → posting (timestamp, fields, count, sender).
    TokenroomposSearch,
    /// short event id → the room and the tokens indexed for the event (for redaction).
    ShorteventidSearchtokens,
    // federation
    /// `server_name 0xFF key_id` → another server's verify key and until when it is valid.
    ServerkeyidVerifykey,
    /// `server_name` → its last checked `/_matrix/key/v2/server` response (served as a notary).
    ServernameKeyresponse,
    // federation sender
    /// `destination 0xFF seq (u64)` → a PDU (canonical JSON) waiting to be sent to the
    /// destination, oldest first.
    DestinationseqPdu,
    /// `destination 0xFF seq (u64)` → an EDU (`{"edu_type", "content"}`) waiting to be sent to
    /// the destination, oldest first.
    DestinationseqEdu,
    /// `destination` → since when (ms, u64) its transactions have been failing, without a
    /// success since; absent while it answers.
    DestinationDownsince,
    /// `appservice id 0xFF seq` → event id: events waiting to be pushed to an application
    /// service, oldest first.
    AppserviceseqEvent,
    /// appservice id → a registration added with the admin API, as sent (YAML or JSON).
    AppserviceidRegistration,
    // rows kept for a while
    /// `deadline (u64 ms) table name 0xFF row key` → "": a row of another table to delete once
    /// the deadline has passed (stored transaction answers and the like).
    DeadlinerowExpire,
    // guilds
    /// `invite code 0xFF room_id` → "": the guild spaces holding a `chat.paracord.invite` with
    /// that code, so an invite can be found by a user who is not in the guild yet.
    CoderoomInvite,
    /// `origin 0xFF txn_id` → the `{status, body}` answer to a relayed Paracord request
    /// (spec/rest.md §3), so a repeated relay gets the same answer.
    OrigintxnRelay,
    // applications (spec/applications.md)
    /// application id → the application (name, owner, bot user, …).
    AppidApplication,
    /// `owner user_id 0xFF application id` → "": an owner's applications.
    OwnerappApplication,
    /// `guild room_id 0xFF application id` → the application's install in that guild
    /// (its managed role, the permissions granted).
    GuildappInstall,
    /// `guild room_id 0xFF application id 0xFF command id` → a slash command.
    GuildappcmdCommand,
    /// interaction id → a slash command invocation waiting for (or given) its answer.
    InteractionidInteraction,
    /// webhook id → the webhook's record (channel, its user, the SHA-256 of its token, the
    /// GitHub secret; spec/webhooks.md). The public part is `chat.paracord.webhook` state.
    WebhookidWebhook,
    /// `room_id 0xFF user_id 0xFF LiveKit identity` → a LiveKit token handed out for a call
    /// in that room (its LiveKit room, device, whether the participant is connected), kept
    /// until the participant leaves the SFU, so that a kick reaches them after a restart.
    RoomuseridentityRtcparticipant,
    // delayed events (MSC4140)
    /// delay id → the delayed event (owner, room, type, state key, content, delay, when its
    /// timer started) and, once finalised, how it ended.
    DelayidDelayedevent,
    /// `send time (u64 ms) delay_id` → "": scheduled delayed events, the next one due first
    /// (the timer reads the head).
    DuedelayidScheduled,
    /// `user_id 0xFF send time (u64 ms) delay_id` → "": a user's scheduled delayed events,
    /// the next one due first.
    UserduedelayidScheduled,
    /// `user_id 0xFF device_id 0xFF room_id 0xFF endpoint/txn_id` → delay id: delayed events
    /// already scheduled by a transaction (idempotency).
    UsertxnDelayid,
    // polls (MSC3381, spec/polls.md)
    /// `closes_at (u64 ms) poll start event_id` → room id: polls of this server's users that
    /// the server ends at their closing time, the next one due first (the timer reads the
    /// head). Written in the start event's batch, deleted in its end's.
    DueeventPollroom,
    // slow mode (spec/guilds.md §9)
    /// `room_id 0xFF user_id` → `origin_server_ts` (u64 ms): the latest message of each
    /// sender in each room that slow mode counts. Written in the message's batch.
    RoomuserLastmessage,
}

impl Table {
    pub const ALL: &'static [Table] = &[
        Table::GlobalValue,
        Table::UseridAccount,
        Table::TokenhashSession,
        Table::UserdeviceDevice,
        Table::TxnEventid,
        Table::EventidShorteventid,
        Table::ShorteventidPdu,
        Table::ShorteventidMeta,
        Table::RoomidRoom,
        Table::RoompositionShorteventid,
        Table::RoomtsposShorteventid,
        Table::SnapshotidState,
        Table::UserroomMembership,
        Table::RoomuserMembership,
        Table::EventidRejected,
        Table::OrigintxnResponse,
        Table::UserroomRemoteinvite,
        Table::AliasRoomid,
        Table::RoomidPublished,
        Table::UserroomtypeAccountdata,
        Table::UserfilterFilter,
        Table::RoomreceiptReceipt,
        Table::UseridPresence,
        Table::UseridDirectory,
        Table::TargetrelposShorteventid,
        Table::TargetkeysenderPos,
        Table::RoomthreadLatest,
        Table::RootThreadcount,
        Table::ReportidReport,
        Table::OpenidtokenSession,
        Table::UserposNotification,
        Table::UserroomposHighlight,
        Table::UserapppushkeyPusher,
        Table::MediaidMedia,
        Table::OriginaccessMedia,
        Table::OriginCachebytes,
        // key backup
        Table::UserversionBackup,
        Table::UserversionroomsessionRoomkey,
        // end-to-end encryption
        Table::UserdeviceDevicekeys,
        Table::UserdevicealgseqOnetimekey,
        Table::UserdevicealgFallbackkey,
        Table::UserusageCrosssigningkey,
        Table::TargetsignerSignature,
        Table::PositionuserKeychange,
        Table::UserdeviceposTodevice,
        Table::UserdevicetxnTodevice,
        Table::UseridDehydrateddevice,
        // full-text search
        Table::TokenroomposSearch,
        Table::ShorteventidSearchtokens,
        // federation
        Table::ServerkeyidVerifykey,
        Table::ServernameKeyresponse,
        // federation sender
        Table::DestinationseqPdu,
        Table::DestinationseqEdu,
        Table::DestinationDownsince,
        // application services
        Table::AppserviceseqEvent,
        Table::AppserviceidRegistration,
        // rows kept for a while
        Table::DeadlinerowExpire,
        // guilds
        Table::CoderoomInvite,
        Table::OrigintxnRelay,
        Table::AppidApplication,
        Table::OwnerappApplication,
        Table::GuildappInstall,
        Table::GuildappcmdCommand,
        Table::InteractionidInteraction,
        Table::WebhookidWebhook,
        Table::RoomuseridentityRtcparticipant,
        // delayed events
        Table::DelayidDelayedevent,
        Table::DuedelayidScheduled,
        Table::UserduedelayidScheduled,
        Table::UsertxnDelayid,
        // polls
        Table::DueeventPollroom,
        // slow mode
        Table::RoomuserLastmessage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::GlobalValue => "global_value",
            Table::UseridAccount => "userid_account",
            Table::TokenhashSession => "tokenhash_session",
            Table::UserdeviceDevice => "userdevice_device",
            Table::TxnEventid => "txn_eventid",
            Table::EventidShorteventid => "eventid_shorteventid",
            Table::ShorteventidPdu => "shorteventid_pdu",
            Table::ShorteventidMeta => "shorteventid_meta",
            Table::RoomidRoom => "roomid_room",
            Table::RoomtsposShorteventid => "roomtspos_shorteventid",
            Table::RoompositionShorteventid => "roomposition_shorteventid",
            Table::SnapshotidState => "snapshotid_state",
            Table::UserroomMembership => "userroom_membership",
            Table::RoomuserMembership => "roomuser_membership",
            Table::EventidRejected => "eventid_rejected",
            Table::OrigintxnResponse => "origintxn_response",
            Table::UserroomRemoteinvite => "userroom_remoteinvite",
            Table::AliasRoomid => "alias_roomid",
            Table::RoomidPublished => "roomid_published",
            Table::UserroomtypeAccountdata => "userroomtype_accountdata",
            Table::UserfilterFilter => "userfilter_filter",
            Table::RoomreceiptReceipt => "roomreceipt_receipt",
            Table::UseridPresence => "userid_presence",
            Table::UseridDirectory => "userid_directory",
            Table::TargetrelposShorteventid => "targetrelpos_shorteventid",
            Table::TargetkeysenderPos => "targetkeysender_pos",
            Table::RoomthreadLatest => "roomthread_latest",
            Table::RootThreadcount => "root_threadcount",
            Table::ReportidReport => "reportid_report",
            Table::OpenidtokenSession => "openidtoken_session",
            Table::UserposNotification => "userpos_notification",
            Table::UserroomposHighlight => "userroompos_highlight",
            Table::UserapppushkeyPusher => "userapppushkey_pusher",
            Table::MediaidMedia => "mediaid_media",
            Table::OriginaccessMedia => "originaccess_media",
            Table::OriginCachebytes => "origin_cachebytes",
            // key backup
            Table::UserversionBackup => "userversion_backup",
            Table::UserversionroomsessionRoomkey => "userversionroomsession_roomkey",
            // end-to-end encryption
            Table::UserdeviceDevicekeys => "userdevice_devicekeys",
            Table::UserdevicealgseqOnetimekey => "userdevicealgseq_onetimekey",
            Table::UserdevicealgFallbackkey => "userdevicealg_fallbackkey",
            Table::UserusageCrosssigningkey => "userusage_crosssigningkey",
            Table::TargetsignerSignature => "targetsigner_signature",
            Table::PositionuserKeychange => "positionuser_keychange",
            Table::UserdeviceposTodevice => "userdevicepos_todevice",
            Table::UserdevicetxnTodevice => "userdevicetxn_todevice",
            Table::UseridDehydrateddevice => "userid_dehydrateddevice",
            // full-text search
            Table::TokenroomposSearch => "tokenroompos_search",
            Table::ShorteventidSearchtokens => "shorteventid_searchtokens",
            // federation
            Table::ServerkeyidVerifykey => "serverkeyid_verifykey",
            Table::ServernameKeyresponse => "servername_keyresponse",
            // federation sender
            Table::DestinationseqPdu => "destinationseq_pdu",
            Table::DestinationseqEdu => "destinationseq_edu",
            Table::DestinationDownsince => "destination_downsince",
            // application services
            Table::AppserviceseqEvent => "appserviceseq_event",
            Table::AppserviceidRegistration => "appserviceid_registration",
            // rows kept for a while
            Table::DeadlinerowExpire => "deadlinerow_expire",
            // guilds
            Table::CoderoomInvite => "coderoom_invite",
            Table::OrigintxnRelay => "origintxn_relay",
            // applications
            Table::AppidApplication => "appid_application",
            Table::OwnerappApplication => "ownerapp_application",
            Table::GuildappInstall => "guildapp_install",
            Table::GuildappcmdCommand => "guildappcmd_command",
            Table::InteractionidInteraction => "interactionid_interaction",
            Table::WebhookidWebhook => "webhookid_webhook",
            Table::RoomuseridentityRtcparticipant => "roomuseridentity_rtcparticipant",
            // delayed events
            Table::DelayidDelayedevent => "delayid_delayedevent",
            Table::DuedelayidScheduled => "duedelayid_scheduled",
            Table::UserduedelayidScheduled => "userduedelayid_scheduled",
            Table::UsertxnDelayid => "usertxn_delayid",
            // polls
            Table::DueeventPollroom => "dueevent_pollroom",
            // slow mode
            Table::RoomuserLastmessage => "roomuser_lastmessage",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = Table::ALL.iter().map(|t| t.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Table::ALL.len());
    }
}
