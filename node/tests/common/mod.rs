//! Shared by the node tests: a real node on a real listener.

#![allow(dead_code)]

pub mod api;
