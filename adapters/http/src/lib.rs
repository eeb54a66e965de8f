//! `ferry-http-adapter`: the HTTP device endpoint with long-poll command delivery.
//!
//! Not built yet: issue #5. Empty until then, so that nothing pretends to work.
