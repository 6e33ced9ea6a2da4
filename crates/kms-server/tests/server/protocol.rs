//! The wire protocol: HTTP framing and errors, SigV4.

mod http;
mod sigv4;
