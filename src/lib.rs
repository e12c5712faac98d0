//! Cordon: a memory server for AI agents with per-user isolation by construction.
//!
//! A request's identity comes from a verified JWT ([`auth`]), becomes a keyed
//! [`owner::OwnerHash`], and selects one collection per user in the [`store`].
//! Texts are embedded locally ([`embed`]); every point read back passes the
//! [`guard`] in the [`guarded`] store before the [`api`] returns it. With a
//! KEK configured, memories are sealed at rest under a key per user ([`seal`]).
//! What lets users and operators check isolation: each user's access log
//! ([`trail`]), signed erase receipts and read scope statements ([`receipt`],
//! [`scope`]), the breach policy that fails closed and quarantines
//! ([`breach`]), and the live [`canary`].
//! The binary's commands live in [`cli`]; [`load`] is its leak and collision
//! load tool (`cordon load`).

pub mod access;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod breach;
pub mod canary;
pub mod cli;
pub mod embed;
pub mod error;
pub mod expiry;
pub mod guard;
pub mod guarded;
pub mod keyword;
pub mod limits;
pub mod listener;
pub mod load;
pub mod locks;
pub mod metrics;
pub mod owner;
pub mod receipt;
pub mod scope;
pub mod seal;
pub mod secret;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod trail;
