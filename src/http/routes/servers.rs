//! The server inventory: `/api/v1/servers`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::guard::authorize;
use crate::auth::principal::Principal;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extract::AppJson;
use crate::http::validate::{self, ClientAddr};
use crate::servers;
use crate::store::{PageRequest, Server, ServerPatch, ServerQuery};

const MAX_DESCRIPTION: usize = 1000;
const MAX_TAGS: usize = 64;
const MAX_TAG_VALUE: usize = 256;
const MAX_ENDPOINT: usize = 2048;
/// Most `tag=` filters in one query.
const MAX_TAG_FILTERS: usize = 16;

fn operator(principal: &Principal, ip: Option<IpAddr>) -> servers::Operator<'_> {
    servers::Operator {
        username: &principal.username,
        ip,
    }
}

fn server_json(server: &Server) -> Value {
    json!({
        "id": server.id,
        "name": server.name,
        "endpoint": server.endpoint,
        "description": server.description,
        "tags": server.tags,
        "created_at": server.created_at,
        "updated_at": server.updated_at,
        "created_by": server.created_by,
    })
}

/// `^[a-z0-9][a-z0-9-]{0,62}$`
fn server_name(field: &str, value: &str) -> Result<String, ApiError> {
    let valid = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(value.to_owned())
    } else {
        Err(ApiError::invalid_field(
            field,
            "must match ^[a-z0-9][a-z0-9-]{0,62}$",
        ))
    }
}

/// An absolute http(s) URL with a host and no credentials.
fn endpoint(value: &str) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError::invalid_field("endpoint", why);
    if value.len() > MAX_ENDPOINT {
        return Err(invalid("is longer than 2048 characters"));
    }
    let url =
        url::Url::parse(value).map_err(|e| invalid(&format!("is not an absolute URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not contain credentials"));
    }
    Ok(value.to_owned())
}

/// A tag key: `^[a-z0-9][a-z0-9_.\-/]{0,62}$`.
fn tag_key(value: &str) -> bool {
    (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-/".contains(&b))
}

fn tags(value: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    if value.len() > MAX_TAGS {
        return Err(ApiError::invalid_field(
            "tags",
            format!("has more than {MAX_TAGS} tags"),
        ));
    }
    for (key, tag) in &value {
        if !tag_key(key) {
            return Err(ApiError::invalid_field(
                "tags",
                format!(
                    "key `{}` must match ^[a-z0-9][a-z0-9_.\\-/]{{0,62}}$",
                    key.escape_debug()
                ),
            ));
        }
        if tag.chars().count() > MAX_TAG_VALUE || tag.chars().any(char::is_control) {
            return Err(ApiError::invalid_field(
                "tags",
                format!("value of `{key}` must be at most {MAX_TAG_VALUE} printable characters"),
            ));
        }
    }
    Ok(value)
}

fn description(value: Option<String>) -> Result<Option<String>, ApiError> {
    value
        .map(|d| validate::text("description", d.trim(), MAX_DESCRIPTION))
        .transpose()
}

/// `POST /api/v1/servers` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    name: String,
    endpoint: String,
    description: Option<String>,
    tags: Option<BTreeMap<String, String>>,
}

/// `POST /api/v1/servers`: 201 with the server; 409 when the name is taken.
pub async fn post_server(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    AppJson(body): AppJson<NewServer>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let node = &state.node;
    authorize(node, &principal, "write", "servers", ip).await?;
    let new = servers::NewServer {
        name: server_name("name", &body.name)?,
        endpoint: endpoint(&body.endpoint)?,
        description: description(body.description)?,
        tags: tags(body.tags.unwrap_or_default())?,
    };
    let server = servers::register(node, operator(&principal, ip), new).await?;
    Ok((StatusCode::CREATED, Json(server_json(&server))))
}

/// The query of `GET /api/v1/servers`: `tag=k:v` (repeatable), `name_prefix`, `limit`,
/// `cursor`.
fn list_query(raw: Option<&str>) -> Result<(ServerQuery, u32), ApiError> {
    let (mut tags, mut prefix, mut limit, mut cursor) = (Vec::new(), None, None, None);
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "tag" => {
                let (k, v) = value
                    .split_once(':')
                    .ok_or_else(|| ApiError::invalid_field("tag", "must be key:value"))?;
                if !tag_key(k) {
                    return Err(ApiError::invalid_field(
                        "tag",
                        format!("`{}` is not a tag key", k.escape_debug()),
                    ));
                }
                tags.push((k.to_owned(), v.to_owned()));
                if tags.len() > MAX_TAG_FILTERS {
                    return Err(ApiError::invalid_field(
                        "tag",
                        format!("at most {MAX_TAG_FILTERS} filters"),
                    ));
                }
            }
            "name_prefix" => {
                let valid = value.len() <= 63
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !valid {
                    return Err(ApiError::invalid_field(
                        "name_prefix",
                        "may hold only a-z, 0-9 and -, at most 63",
                    ));
                }
                prefix = Some(value.into_owned());
            }
            "limit" => {
                let n = value.parse().map_err(|_| {
                    ApiError::invalid_field("limit", "must be a number from 1 to 500")
                })?;
                limit = Some(n);
            }
            "cursor" => cursor = Some(value.into_owned()),
            other => {
                return Err(ApiError::invalid_field(
                    other,
                    "is not a filter of this list (tag, name_prefix, limit, cursor)",
                ));
            }
        }
    }
    let limit = validate::limit(limit)?;
    let query = ServerQuery {
        tags,
        name_prefix: prefix.filter(|p| !p.is_empty()),
        page: PageRequest {
            after: validate::decode_cursor(cursor.as_deref())?,
            limit: limit + 1,
        },
    };
    Ok((query, limit))
}

/// `GET /api/v1/servers`.
pub async fn get_servers(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "read", "servers", ip).await?;
    let (query, limit) = list_query(raw.as_deref())?;
    let servers = servers::list(node, &query).await?;
    let (servers, next_cursor) = validate::keyset_page(servers, limit, |s| s.name.clone());
    let items: Vec<Value> = servers.iter().map(server_json).collect();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// `GET /api/v1/servers/{name}`.
pub async fn get_server(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "read", "servers", ip).await?;
    let name = server_name("name", &name)?;
    Ok(Json(server_json(&servers::find(node, &name).await?)))
}

/// `PATCH /api/v1/servers/{name}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchServer {
    endpoint: Option<String>,
    #[serde(default, deserialize_with = "validate::nullable")]
    description: Option<Option<String>>,
    tags: Option<BTreeMap<String, String>>,
}

/// `PATCH /api/v1/servers/{name}`: any of endpoint, description, tags (tags replace).
pub async fn patch_server(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(name): Path<String>,
    AppJson(body): AppJson<PatchServer>,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "write", "servers", ip).await?;
    let name = server_name("name", &name)?;
    let patch = ServerPatch {
        endpoint: body.endpoint.as_deref().map(endpoint).transpose()?,
        description: body.description.map(description).transpose()?,
        tags: body.tags.map(tags).transpose()?,
    };
    let updated = servers::update(node, operator(&principal, ip), &name, patch).await?;
    Ok(Json(server_json(&updated)))
}

/// `DELETE /api/v1/servers/{name}`: 204.
pub async fn delete_server(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "write", "servers", ip).await?;
    let name = server_name("name", &name)?;
    servers::remove(node, operator(&principal, ip), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
