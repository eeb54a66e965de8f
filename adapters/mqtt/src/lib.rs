//! `ferry-mqtt-adapter`: the MQTT 3.1.1 / 5.0 device endpoint.
//!
//! Not built yet: issue #4. Empty until then, so that nothing pretends to work.
