//! The compiled, immutable types the request path reads, independent of the config file
//! format. (Moving `Runtime`, `Route` and the server settings here from `config::compile` is
//! under way; route actions are first.)

pub mod action;

pub use action::{Action, Redirect, Respond};
