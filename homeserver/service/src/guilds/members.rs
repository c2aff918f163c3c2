//! Roles (modify, reorder, delete), members, bans and invites (spec/rest.md §7, §8, §9, §11).
