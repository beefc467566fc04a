//! Virtual hosts: the topology (exchanges, queues, bindings) shared by all connections.

/// A virtual host.
pub struct VHost {
    /// Its name, e.g. `/`.
    pub name: String,
}

impl VHost {
    /// An empty vhost.
    pub fn new(name: &str) -> VHost {
        VHost {
            name: name.to_string(),
        }
    }
}
