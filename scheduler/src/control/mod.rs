//! The control plane's model, apart from its HTTP face (`crate::api`): what an app is
//! and the rules for it. Nothing here knows about HTTP, so the model can be tested and
//! changed without a server, and the API only translates.

pub mod appdef;
