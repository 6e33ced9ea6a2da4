//! HTTP/2 `:authority` compatibility adapter. (being written)
#![forbid(unsafe_code)]
