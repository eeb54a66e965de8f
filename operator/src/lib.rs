//! `ferry-operator`: reconciles the `AddressSpace` and `Tenant` custom resources.
//!
//! Not built yet: issue #6. Empty until then, so that nothing pretends to work.
