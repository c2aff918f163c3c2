//! The route table, readable top to bottom.

use std::sync::Arc;

use axum::{
    extract::{MatchedPath, Request, State},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
    Router,
};
use paracord_core::Error;
use paracord_service::Services;
use ruma::api::client as c;
use tower_http::{catch_panic::CatchPanicLayer, cors::CorsLayer, trace::TraceLayer};

use crate::{
    client::{
        account, appservice, backup, config, delayed_events, device, directory, discovery,
        ephemeral, keys, membership, message, openid, profile, push, relations, reports, room,
        search, session, space, state, sync, tags, thirdparty, user_directory,
    },
    federation, federation_events, federation_rooms, media,
    ruma_wrapper::RouterExt,
    synapse_admin,
    web::WebAsset,
    well_known, ApiError, AppState,
};

/// The state paths without a state key (empty state key), with and without trailing slash.
const STATE_WITHOUT_KEY: &[&str] = &[
    "/_matrix/client/v3/rooms/{room_id}/state/{event_type}",
    "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/",
    "/_matrix/client/r0/rooms/{room_id}/state/{event_type}",
    "/_matrix/client/r0/rooms/{room_id}/state/{event_type}/",
];

/// The whole HTTP application without the web client (`/` says the binary has none).
/// Separate from `main` so tests can run it in-process.
pub fn app(services: Arc<Services>) -> Router {
    app_with_web(services, &[])
}

/// The whole HTTP application, serving `web` (the built web client, embedded by the
/// `paracord` binary) at `/` for whatever the routes below do not match.
pub fn app_with_web(services: Arc<Services>, web: &'static [WebAsset]) -> Router {
    let state = AppState(services);
    Router::new()
        // discovery
        .ruma::<c::discovery::get_supported_versions::Request, _, _>(
            discovery::get_supported_versions_route,
        )
        .ruma::<c::discovery::get_capabilities::v3::Request, _, _>(
            discovery::get_capabilities_route,
        )
        .route(
            "/.well-known/matrix/client",
            get(well_known::well_known_client_route),
        )
        .route(
            "/.well-known/matrix/server",
            get(well_known::well_known_server_route),
        )
        // accounts
        .ruma::<c::account::register::v3::Request, _, _>(account::register_route)
        .ruma::<c::account::get_username_availability::v3::Request, _, _>(
            account::get_username_availability_route,
        )
        .ruma::<c::account::check_registration_token_validity::v1::Request, _, _>(
            account::registration_token_validity_route,
        )
        .ruma::<c::account::whoami::v3::Request, _, _>(account::whoami_route)
        // application services
        .ruma::<c::appservice::request_ping::v1::Request, _, _>(appservice::request_ping_route)
        .route(
            "/_paracord/v1/admin/appservices",
            get(appservice::admin_list_route).post(appservice::admin_add_route),
        )
        .route(
            "/_paracord/v1/admin/appservices/{id}",
            delete(appservice::admin_remove_route),
        )
        // third-party networks, answered by the appservices
        .ruma::<c::thirdparty::get_protocols::v3::Request, _, _>(thirdparty::get_protocols_route)
        .ruma::<c::thirdparty::get_protocol::v3::Request, _, _>(thirdparty::get_protocol_route)
        .ruma::<c::thirdparty::get_location_for_protocol::v3::Request, _, _>(
            thirdparty::get_location_for_protocol_route,
        )
        .ruma::<c::thirdparty::get_user_for_protocol::v3::Request, _, _>(
            thirdparty::get_user_for_protocol_route,
        )
        .ruma::<c::thirdparty::get_location_for_room_alias::v3::Request, _, _>(
            thirdparty::get_location_for_room_alias_route,
        )
        .ruma::<c::thirdparty::get_user_for_user_id::v3::Request, _, _>(
            thirdparty::get_user_for_user_id_route,
        )
        .ruma::<c::account::change_password::v3::Request, _, _>(account::change_password_route)
        .ruma::<c::account::deactivate::v3::Request, _, _>(account::deactivate_route)
        .route(
            "/_synapse/admin/v1/register",
            get(synapse_admin::get_nonce_route).post(synapse_admin::register_route),
        )
        .route(
            "/_synapse/admin/v1/send_server_notice",
            post(synapse_admin::send_server_notice_route),
        )
        .route(
            "/_synapse/admin/v1/send_server_notice/{txn_id}",
            put(synapse_admin::send_server_notice_route),
        )
        // sessions
        .ruma::<c::session::get_login_types::v3::Request, _, _>(session::get_login_types_route)
        .ruma::<c::session::login::v3::Request, _, _>(session::login_route)
        .ruma::<c::session::logout::v3::Request, _, _>(session::logout_route)
        .ruma::<c::session::logout_all::v3::Request, _, _>(session::logout_all_route)
        .ruma::<c::session::refresh_token::v3::Request, _, _>(session::refresh_token_route)
        // devices
        .ruma::<c::device::get_devices::v3::Request, _, _>(device::get_devices_route)
        .ruma::<c::device::get_device::v3::Request, _, _>(device::get_device_route)
        .ruma::<c::device::update_device::v3::Request, _, _>(device::update_device_route)
        .ruma::<c::device::delete_device::v3::Request, _, _>(device::delete_device_route)
        .ruma::<c::device::delete_devices::v3::Request, _, _>(device::delete_devices_route)
        // profile
        .ruma::<c::profile::get_profile::v3::Request, _, _>(profile::get_profile_route)
        .ruma::<c::profile::get_display_name::v3::Request, _, _>(profile::get_display_name_route)
        .ruma::<c::profile::set_display_name::v3::Request, _, _>(profile::set_display_name_route)
        .ruma::<c::profile::get_avatar_url::v3::Request, _, _>(profile::get_avatar_url_route)
        .ruma::<c::profile::set_avatar_url::v3::Request, _, _>(profile::set_avatar_url_route)
        // rooms
        .ruma::<c::room::create_room::v3::Request, _, _>(room::create_room_route)
        .ruma::<c::room::get_room_event::v3::Request, _, _>(room::get_room_event_route)
        .ruma::<c::room::aliases::v3::Request, _, _>(room::aliases_route)
        .ruma::<c::context::get_context::v3::Request, _, _>(room::get_context_route)
        // membership
        .ruma::<c::membership::join_room_by_id::v3::Request, _, _>(
            membership::join_room_by_id_route,
        )
        .ruma::<c::membership::join_room_by_id_or_alias::v3::Request, _, _>(
            membership::join_room_by_id_or_alias_route,
        )
        .ruma::<c::membership::invite_user::v3::Request, _, _>(membership::invite_user_route)
        .ruma::<c::membership::leave_room::v3::Request, _, _>(membership::leave_room_route)
        .ruma::<c::membership::kick_user::v3::Request, _, _>(membership::kick_user_route)
        .ruma::<c::membership::ban_user::v3::Request, _, _>(membership::ban_user_route)
        .ruma::<c::membership::unban_user::v3::Request, _, _>(membership::unban_user_route)
        .ruma::<c::membership::forget_room::v3::Request, _, _>(membership::forget_room_route)
        .ruma::<c::membership::joined_rooms::v3::Request, _, _>(membership::joined_rooms_route)
        .ruma::<c::membership::get_member_events::v3::Request, _, _>(
            membership::get_member_events_route,
        )
        .ruma::<c::membership::joined_members::v3::Request, _, _>(membership::joined_members_route)
        // state
        .ruma::<c::state::get_state_events::v3::Request, _, _>(state::get_state_events_route)
        .ruma_with::<c::state::get_state_event_for_key::v3::Request, _, _>(
            STATE_WITHOUT_KEY,
            state::get_state_event_for_key_route,
        )
        // (`?org.matrix.msc4140.delay=` makes it a delayed event)
        .ruma_with::<c::state::send_state_event::v3::Request, _, _>(
            STATE_WITHOUT_KEY,
            delayed_events::send_state_event_route,
        )
        // messages (`?org.matrix.msc4140.delay=` makes it a delayed event)
        .ruma::<c::message::send_message_event::v3::Request, _, _>(
            delayed_events::send_message_event_route,
        )
        .ruma::<c::message::get_message_events::v3::Request, _, _>(
            message::get_message_events_route,
        )
        .ruma::<c::redact::redact_event::v3::Request, _, _>(message::redact_event_route)
        // delayed events (MSC4140)
        .route(
            delayed_events::DELAYED_EVENT_PATHS[0],
            put(delayed_events::send_delayed_event_route),
        )
        .route(
            delayed_events::DELAYED_EVENT_PATHS[1],
            put(delayed_events::send_delayed_event_route),
        )
        .ruma_with::<c::delayed_events::get_all_delayed_events::unstable::Request, _, _>(
            delayed_events::STABLE_LIST,
            delayed_events::get_all_delayed_events_route,
        )
        .ruma_with::<c::delayed_events::get_delayed_event::unstable::Request, _, _>(
            delayed_events::STABLE_ONE,
            delayed_events::get_delayed_event_route,
        )
        .ruma_with::<c::delayed_events::update_delayed_event::unstable_v1::Request, _, _>(
            delayed_events::STABLE_ONE,
            delayed_events::update_delayed_event_route,
        )
        .ruma_with::<c::delayed_events::update_delayed_event::unstable_v2::Request, _, _>(
            delayed_events::STABLE_ACTION,
            delayed_events::update_delayed_event_action_route,
        )
        // relations and threads
        .ruma::<c::relations::get_relating_events::v1::Request, _, _>(
            relations::get_relating_events_route,
        )
        .ruma::<c::relations::get_relating_events_with_rel_type::v1::Request, _, _>(
            relations::get_relating_events_with_rel_type_route,
        )
        .ruma::<c::relations::get_relating_events_with_rel_type_and_event_type::v1::Request, _, _>(
            relations::get_relating_events_with_rel_type_and_event_type_route,
        )
        .ruma::<c::threads::get_threads::v1::Request, _, _>(relations::get_threads_route)
        // push rules
        .ruma::<c::push::get_pushrules_all::v3::Request, _, _>(push::get_pushrules_all_route)
        .ruma::<c::push::get_pushrules_global_scope::v3::Request, _, _>(
            push::get_pushrules_global_scope_route,
        )
        .ruma::<c::push::get_pushrule::v3::Request, _, _>(push::get_pushrule_route)
        .ruma::<c::push::set_pushrule::v3::Request, _, _>(push::set_pushrule_route)
        .ruma::<c::push::delete_pushrule::v3::Request, _, _>(push::delete_pushrule_route)
        .ruma::<c::push::get_pushrule_enabled::v3::Request, _, _>(push::get_pushrule_enabled_route)
        .ruma::<c::push::set_pushrule_enabled::v3::Request, _, _>(push::set_pushrule_enabled_route)
        .ruma::<c::push::get_pushrule_actions::v3::Request, _, _>(push::get_pushrule_actions_route)
        .ruma::<c::push::set_pushrule_actions::v3::Request, _, _>(push::set_pushrule_actions_route)
        .ruma::<c::push::get_notifications::v3::Request, _, _>(push::get_notifications_route)
        .ruma::<c::push::get_pushers::v3::Request, _, _>(push::get_pushers_route)
        .ruma::<c::push::set_pusher::v3::Request, _, _>(push::set_pusher_route)
        // tags, the user directory, reports, jumping to a date, OpenID
        .ruma::<c::tag::get_tags::v3::Request, _, _>(tags::get_tags_route)
        .ruma::<c::tag::create_tag::v3::Request, _, _>(tags::create_tag_route)
        .ruma::<c::tag::delete_tag::v3::Request, _, _>(tags::delete_tag_route)
        .ruma::<c::user_directory::search_users::v3::Request, _, _>(user_directory::search_users_route)
        .ruma::<c::room::report_content::v3::Request, _, _>(reports::report_content_route)
        .ruma::<c::room::report_room::v3::Request, _, _>(reports::report_room_route)
        .ruma::<c::reporting::report_user::v3::Request, _, _>(reports::report_user_route)
        .ruma::<c::room::get_event_by_timestamp::v1::Request, _, _>(
            message::get_event_by_timestamp_route,
        )
        .ruma::<c::account::request_openid_token::v3::Request, _, _>(
            openid::request_openid_token_route,
        )
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(openid::openid_userinfo_route),
        )
        // spaces and ways in
        .ruma::<c::space::get_hierarchy::v1::Request, _, _>(space::get_hierarchy_route)
        .ruma::<c::room::get_summary::v1::Request, _, _>(space::get_summary_route)
        .ruma::<c::knock::knock_room::v3::Request, _, _>(space::knock_room_route)
        .ruma::<c::room::upgrade_room::v3::Request, _, _>(space::upgrade_room_route)
        // directory
        .ruma::<c::alias::create_alias::v3::Request, _, _>(directory::create_alias_route)
        .ruma::<c::alias::delete_alias::v3::Request, _, _>(directory::delete_alias_route)
        .ruma::<c::alias::get_alias::v3::Request, _, _>(directory::get_alias_route)
        .ruma::<c::directory::get_room_visibility::v3::Request, _, _>(
            directory::get_room_visibility_route,
        )
        .ruma::<c::directory::set_room_visibility::v3::Request, _, _>(
            directory::set_room_visibility_route,
        )
        .ruma::<c::directory::get_public_rooms::v3::Request, _, _>(
            directory::get_public_rooms_route,
        )
        .ruma::<c::directory::get_public_rooms_filtered::v3::Request, _, _>(
            directory::get_public_rooms_filtered_route,
        )
        // sync
        .ruma::<c::sync::sync_events::v3::Request, _, _>(sync::sync_events_route)
        .ruma::<c::filter::create_filter::v3::Request, _, _>(sync::create_filter_route)
        .ruma::<c::filter::get_filter::v3::Request, _, _>(sync::get_filter_route)
        // account data
        .ruma::<c::config::set_global_account_data::v3::Request, _, _>(
            config::set_global_account_data_route,
        )
        .ruma::<c::config::get_global_account_data::v3::Request, _, _>(
            config::get_global_account_data_route,
        )
        .ruma::<c::config::set_room_account_data::v3::Request, _, _>(
            config::set_room_account_data_route,
        )
        .ruma::<c::config::get_room_account_data::v3::Request, _, _>(
            config::get_room_account_data_route,
        )
        // federation: keys and version
        .ruma::<ruma::api::federation::discovery::get_server_keys::v2::Request, _, _>(
            federation::get_server_keys_route,
        )
        .ruma::<ruma::api::federation::discovery::get_remote_server_keys::v2::Request, _, _>(
            federation::get_remote_server_keys_route,
        )
        .ruma::<ruma::api::federation::discovery::get_remote_server_keys_batch::v2::Request, _, _>(
            federation::get_remote_server_keys_batch_route,
        )
        .ruma::<ruma::api::federation::discovery::get_server_version::v1::Request, _, _>(
            federation::get_server_version_route,
        )
        .ruma::<ruma::api::federation::query::get_profile_information::v1::Request, _, _>(
            federation::get_profile_information_route,
        )
        .ruma::<ruma::api::federation::query::get_room_information::v1::Request, _, _>(
            federation::get_room_information_route,
        )
        .ruma::<ruma::api::federation::directory::get_public_rooms::v1::Request, _, _>(
            federation::get_public_rooms_route,
        )
        .ruma::<ruma::api::federation::directory::get_public_rooms_filtered::v1::Request, _, _>(
            federation::get_public_rooms_filtered_route,
        )
        .ruma::<ruma::api::federation::transactions::send_transaction_message::v1::Request, _, _>(
            federation_rooms::send_transaction_message_route,
        )
        .ruma::<ruma::api::federation::membership::prepare_join_event::v1::Request, _, _>(
            federation_rooms::prepare_join_event_route,
        )
        .route(
            "/_matrix/federation/v1/send_join/{room_id}/{event_id}",
            put(federation_rooms::create_membership_event_v1_route),
        )
        .route(
            "/_matrix/federation/v1/send_leave/{room_id}/{event_id}",
            put(federation_rooms::create_membership_event_v1_route),
        )
        .ruma::<ruma::api::federation::membership::create_join_event::v2::Request, _, _>(
            federation_rooms::create_join_event_route,
        )
        .ruma::<ruma::api::federation::authenticated_media::get_content::v1::Request, _, _>(
            media::federation_download_route,
        )
        .ruma::<ruma::api::federation::authenticated_media::get_content_thumbnail::v1::Request, _, _>(
            media::federation_thumbnail_route,
        )
        .ruma::<ruma::api::federation::space::get_hierarchy::v1::Request, _, _>(
            federation_rooms::get_hierarchy_route,
        )
        .ruma::<ruma::api::federation::membership::prepare_knock_event::v1::Request, _, _>(
            federation_rooms::prepare_knock_event_route,
        )
        .ruma::<ruma::api::federation::membership::create_knock_event::v1::Request, _, _>(
            federation_rooms::create_knock_event_route,
        )
        .ruma::<ruma::api::federation::membership::create_invite::v2::Request, _, _>(
            federation_rooms::create_invite_route,
        )
        .ruma::<ruma::api::federation::membership::prepare_leave_event::v1::Request, _, _>(
            federation_rooms::prepare_leave_event_route,
        )
        .ruma::<ruma::api::federation::membership::create_leave_event::v2::Request, _, _>(
            federation_rooms::create_leave_event_route,
        )
        .ruma::<ruma::api::federation::device::get_devices::v1::Request, _, _>(
            federation::get_devices_route,
        )
        .ruma::<ruma::api::federation::keys::get_keys::v1::Request, _, _>(
            federation::get_keys_route,
        )
        .ruma::<ruma::api::federation::keys::claim_keys::v1::Request, _, _>(
            federation::claim_keys_route,
        )
        // federation: reading a room's events, state and history
        .ruma::<ruma::api::federation::event::get_event::v1::Request, _, _>(
            federation_events::get_event_route,
        )
        .ruma::<ruma::api::federation::event::get_room_state_ids::v1::Request, _, _>(
            federation_events::get_room_state_ids_route,
        )
        .ruma::<ruma::api::federation::event::get_room_state::v1::Request, _, _>(
            federation_events::get_room_state_route,
        )
        .ruma::<ruma::api::federation::authorization::get_event_authorization::v1::Request, _, _>(
            federation_events::get_event_authorization_route,
        )
        .ruma::<ruma::api::federation::event::get_missing_events::v1::Request, _, _>(
            federation_events::get_missing_events_route,
        )
        .ruma::<ruma::api::federation::backfill::get_backfill::v1::Request, _, _>(
            federation_events::get_backfill_route,
        )
        // end-to-end encryption
        .ruma::<c::keys::upload_keys::v3::Request, _, _>(keys::upload_keys_route)
        .ruma::<c::keys::get_keys::v3::Request, _, _>(keys::get_keys_route)
        .ruma::<c::keys::claim_keys::v3::Request, _, _>(keys::claim_keys_route)
        .ruma::<c::keys::get_key_changes::v3::Request, _, _>(keys::get_key_changes_route)
        .ruma::<c::keys::upload_signing_keys::v3::Request, _, _>(keys::upload_signing_keys_route)
        .ruma::<c::keys::upload_signatures::v3::Request, _, _>(keys::upload_signatures_route)
        .ruma::<c::to_device::send_event_to_device::v3::Request, _, _>(keys::send_to_device_route)
        .ruma::<c::dehydrated_device::put_dehydrated_device::unstable::Request, _, _>(
            keys::put_dehydrated_device_route,
        )
        .ruma::<c::dehydrated_device::get_dehydrated_device::unstable::Request, _, _>(
            keys::get_dehydrated_device_route,
        )
        .ruma::<c::dehydrated_device::delete_dehydrated_device::unstable::Request, _, _>(
            keys::delete_dehydrated_device_route,
        )
        .ruma::<c::dehydrated_device::get_events::unstable::Request, _, _>(
            keys::dehydrated_events_route,
        )
        // key backup
        .ruma::<c::backup::create_backup_version::v3::Request, _, _>(
            backup::create_backup_version_route,
        )
        .ruma::<c::backup::get_latest_backup_info::v3::Request, _, _>(
            backup::get_latest_backup_info_route,
        )
        .ruma::<c::backup::get_backup_info::v3::Request, _, _>(backup::get_backup_info_route)
        .ruma::<c::backup::update_backup_version::v3::Request, _, _>(
            backup::update_backup_version_route,
        )
        .ruma::<c::backup::delete_backup_version::v3::Request, _, _>(
            backup::delete_backup_version_route,
        )
        .ruma::<c::backup::add_backup_keys::v3::Request, _, _>(backup::add_backup_keys_route)
        .ruma::<c::backup::add_backup_keys_for_room::v3::Request, _, _>(
            backup::add_backup_keys_for_room_route,
        )
        .ruma::<c::backup::add_backup_keys_for_session::v3::Request, _, _>(
            backup::add_backup_keys_for_session_route,
        )
        .ruma::<c::backup::get_backup_keys::v3::Request, _, _>(backup::get_backup_keys_route)
        .ruma::<c::backup::get_backup_keys_for_room::v3::Request, _, _>(
            backup::get_backup_keys_for_room_route,
        )
        .ruma::<c::backup::get_backup_keys_for_session::v3::Request, _, _>(
            backup::get_backup_keys_for_session_route,
        )
        .ruma::<c::backup::delete_backup_keys::v3::Request, _, _>(backup::delete_backup_keys_route)
        .ruma::<c::backup::delete_backup_keys_for_room::v3::Request, _, _>(
            backup::delete_backup_keys_for_room_route,
        )
        .ruma::<c::backup::delete_backup_keys_for_session::v3::Request, _, _>(
            backup::delete_backup_keys_for_session_route,
        )
        // ephemeral
        .ruma::<c::typing::create_typing_event::v3::Request, _, _>(
            ephemeral::create_typing_event_route,
        )
        .ruma::<c::receipt::create_receipt::v3::Request, _, _>(ephemeral::create_receipt_route)
        .ruma::<c::read_marker::set_read_marker::v3::Request, _, _>(
            ephemeral::set_read_marker_route,
        )
        .ruma::<c::presence::set_presence::v3::Request, _, _>(ephemeral::set_presence_route)
        .ruma::<c::presence::get_presence::v3::Request, _, _>(ephemeral::get_presence_route)
        // search
        .ruma::<c::search::search_events::v3::Request, _, _>(search::search_events_route)
        .route(
            "/_paracord/v1/admin/search/rebuild",
            post(search::rebuild_route),
        )
        // the Paracord profile (spec/rest.md)
        .merge(
            crate::paracord::routes().layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::paracord::relay::relay_layer,
            )),
        )
        // executing webhooks: the token is the secret; not relayed (spec/webhooks.md)
        .merge(crate::paracord::webhooks::execute_routes())
        // the MatrixRTC focus (spec/voice.md)
        .merge(crate::rtc::routes())
        // media
        .route("/_matrix/media/v3/upload", post(media::upload_route))
        .route("/_matrix/media/r0/upload", post(media::upload_route))
        .route("/_matrix/client/v1/media/upload", post(media::upload_route))
        .route("/_matrix/media/v1/create", post(media::create_route))
        .route(
            "/_matrix/media/v3/upload/{server_name}/{media_id}",
            put(media::upload_pending_route),
        )
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}",
            get(media::download_route),
        )
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}",
            get(media::download_named_route),
        )
        .route(
            "/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}",
            get(media::thumbnail_route),
        )
        .route("/_matrix/client/v1/media/config", get(media::config_route))
        .route(
            "/_matrix/client/v1/media/preview_url",
            get(media::preview_url_route),
        )
        // The legacy path, still used by clients (and Complement), the same handler.
        .route(
            "/_matrix/media/v3/preview_url",
            get(media::preview_url_route),
        )
        .route(
            "/_matrix/media/v3/download/{server_name}/{media_id}",
            get(media::legacy_download_route),
        )
        .route(
            "/_matrix/media/v3/download/{server_name}/{media_id}/{file_name}",
            get(media::legacy_download_named_route),
        )
        .route(
            "/_matrix/media/v3/thumbnail/{server_name}/{media_id}",
            get(media::legacy_thumbnail_route),
        )
        .route("/_matrix/media/v3/config", get(media::legacy_config_route))
        // the web client, for what no route above matched; API prefixes stay M_UNRECOGNIZED
        .fallback(move |req: Request| crate::web::serve(web, req))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            settle_writes,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError(Error::internal("handler panicked")).into_response()
        }))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            tracing::info_span!("request", method = %req.method(), route = %route)
        }))
        .layer(CorsLayer::very_permissive())
        .with_state(state)
}

/// A request that may have written is answered once its writes are on disk (with
/// `sync_writes`, the default): the acknowledgement means the data survives a power loss.
/// Reads do not wait.
async fn settle_writes(
    State(state): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let reads_only = matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let response = next.run(req).await;
    if reads_only {
        return response;
    }
    match state.durability.settle().await {
        Ok(()) => response,
        Err(e) => ApiError(e).into_response(),
    }
}

async fn method_not_allowed() -> Response {
    ApiError(Error::new(
        http::StatusCode::METHOD_NOT_ALLOWED,
        paracord_core::ErrorKind::Unrecognized,
        "method not allowed",
    ))
    .into_response()
}
