//! Guild settings, channels and permission overwrites (spec/rest.md §5, §6, §10).
