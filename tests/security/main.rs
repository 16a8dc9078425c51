//! The security suite (issue 15): the real `sandtrail` binary driven with each hostile
//! or careless case the issue names, every one kept as a regression test. Split by
//! what is defended: credentials and sessions (`auth`), what a task can reach
//! (`tasks`), and what a request can cost (`limits`).

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod limits;
mod query;
mod tasks;
