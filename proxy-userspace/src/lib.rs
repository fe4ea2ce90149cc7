//! Twinstack's agent as a library: sources → tracker → model → plan → map writer → kernel.
//! The `twinstack` binary (`main.rs`) is a thin CLI over it.
pub mod agent;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod debug;
pub mod devices;
pub mod family;
pub mod health;
pub mod healthcheck;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod node;
pub mod plan;
pub mod proxier;
pub mod source;
pub mod sync;
pub mod terminate;
pub mod tracker;
pub mod validate;
