//! End-to-end tests: each starts the real server (real model, real embedded
//! engine) on a random loopback port and speaks HTTP to it.

mod access;
mod auth;
mod batching;
mod checks;
mod curation;
mod embeddings;
mod encryption;
mod export;
mod helpers;
mod idempotency;
mod isolation;
mod limits;
mod lockout;
mod mcp;
mod memories;
mod openapi;
mod packed_model;
mod qdrant;
mod replicas;
mod restart;
mod rewrite;
mod tiers;
mod validation;
