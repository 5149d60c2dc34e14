//! The server inventory service: registering, changing and removing servers, each change
//! audited. The fields arrive checked for shape by the front door.

use std::net::IpAddr;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::core::{Core, changed_fields};
use crate::error::{Error, ErrorKind};
use crate::store::{Server, ServerPatch, ServerQuery, StoreError};

/// Who changes the inventory, for the audit log.
#[derive(Clone, Copy, Debug)]
pub struct Operator<'a> {
    /// Their name.
    pub username: &'a str,
    /// Where they called from.
    pub ip: Option<IpAddr>,
}

impl Operator<'_> {
    async fn record(&self, node: &Core, event_type: &str, name: &str, details: Value) {
        let event =
            crate::auth::service::event(node, event_type, "success", self.username, self.ip)
                .on(format!("server:{name}"))
                .with_details(details);
        node.record_audit(event).await;
    }
}

/// A server to register.
pub struct NewServer {
    /// Its unique name.
    pub name: String,
    /// Where it answers.
    pub endpoint: String,
    /// What it is, for people.
    pub description: Option<String>,
    /// Its labels.
    pub tags: std::collections::BTreeMap<String, String>,
}

fn no_such(name: &str) -> Error {
    Error::not_found(format!("no server {name}"))
}

/// Registers a server; a name already taken is a conflict.
pub async fn register(node: &Core, by: Operator<'_>, new: NewServer) -> Result<Server, Error> {
    let now = node.clock.now();
    let server = Server {
        id: Uuid::now_v7(),
        name: new.name,
        endpoint: new.endpoint,
        description: new.description,
        tags: new.tags,
        created_at: now,
        updated_at: now,
        created_by: by.username.to_owned(),
    };
    match node.store.create_server(&server).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(Error::new(
                ErrorKind::Conflict,
                "server_exists",
                format!("a server named {} exists", server.name),
            ));
        }
        Err(err) => return Err(err.into()),
    }
    let details = json!({"endpoint": server.endpoint, "tags": server.tags});
    by.record(node, "server_registered", &server.name, details)
        .await;
    Ok(server)
}

/// The server named `name`.
pub async fn find(node: &Core, name: &str) -> Result<Server, Error> {
    node.store.server(name).await?.ok_or_else(|| no_such(name))
}

/// The servers `query` selects, in name order.
pub async fn list(node: &Core, query: &ServerQuery) -> Result<Vec<Server>, Error> {
    Ok(node.store.list_servers(query).await?)
}

/// Applies `patch` (tags replace), audited with the fields it changed.
pub async fn update(
    node: &Core,
    by: Operator<'_>,
    name: &str,
    patch: ServerPatch,
) -> Result<Server, Error> {
    let changed = changed_fields([
        ("endpoint", patch.endpoint.is_some()),
        ("description", patch.description.is_some()),
        ("tags", patch.tags.is_some()),
    ]);
    let updated = node
        .store
        .update_server(name, &patch, node.clock.now())
        .await?
        .ok_or_else(|| no_such(name))?;
    by.record(node, "server_updated", name, json!({"changed": changed}))
        .await;
    Ok(updated)
}

/// Removes the server named `name`.
pub async fn remove(node: &Core, by: Operator<'_>, name: &str) -> Result<(), Error> {
    if !node.store.delete_server(name).await? {
        return Err(no_such(name));
    }
    by.record(node, "server_deleted", name, json!({})).await;
    Ok(())
}
