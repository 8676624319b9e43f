//! Tenant networks, ports and security groups (issue 14) through the API. Host agents get
//! what to make of them in their desired state (`App::host_networks`).

use super::auth::{allow, Access, Caller};
use super::error::ApiError;
use super::extract::{created, parse_mac, ApiJson};
use super::AppState;
use crate::app::{Op, Outcome};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cosm_wire::{
    CreateNetwork, CreatePort, ErrorBody, Network, NetworkName, Port, SecGroupName, SecurityGroup,
    SetPortGroups,
};

pub(super) fn routes() -> Router<AppState> {
    use Access::*;
    Router::new()
        .route(
            "/api/v1/networks",
            allow(Read, get(list_networks)).merge(allow(Admin, post(create_network))),
        )
        .route(
            "/api/v1/networks/{name}",
            allow(Read, get(show_network))
                .merge(allow(Admin, axum::routing::delete(delete_network))),
        )
        .route(
            "/api/v1/ports",
            allow(Read, get(list_ports)).merge(allow(Admin, post(create_port))),
        )
        .route(
            "/api/v1/ports/{mac}",
            allow(Read, get(show_port)).merge(allow(Admin, axum::routing::delete(delete_port))),
        )
        .route(
            "/api/v1/ports/{mac}/security-groups",
            allow(Admin, put(set_port_groups)),
        )
        .route("/api/v1/secgroups", allow(Read, get(list_secgroups)))
        .route(
            "/api/v1/secgroups/{name}",
            allow(Read, get(show_secgroup))
                .merge(allow(Admin, put(put_secgroup).delete(delete_secgroup))),
        )
}

fn name<T: std::str::FromStr<Err = cosm_wire::NameError>>(s: &str) -> Result<T, ApiError> {
    s.parse().map_err(|e: cosm_wire::NameError| {
        ApiError::field(StatusCode::BAD_REQUEST, "name", e.to_string())
    })
}

fn not_found(what: &str, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} {name} not found"),
    )
}

/// Every tenant network, in name order.
#[utoipa::path(get, path = "/api/v1/networks", tag = "networks",
    responses((status = 200, body = [Network])), security(("bearer" = [])))]
pub(super) async fn list_networks(
    State(state): State<AppState>,
) -> Result<Json<Vec<Network>>, ApiError> {
    Ok(Json(state.app.store.networks()?))
}

/// Create a tenant network: a VXLAN segment (its VNI is the lowest free one unless given)
/// with an IPv4 subnet whose addresses the appliance hands to ports.
#[utoipa::path(post, path = "/api/v1/networks", tag = "networks", request_body = CreateNetwork,
    responses((status = 201, body = Network), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create_network(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(req): ApiJson<CreateNetwork>,
) -> Result<Response, ApiError> {
    let Outcome::Network(n) = state.app.store.run(Op::CreateNetwork(req)).await? else {
        unreachable!("CreateNetwork produces a network")
    };
    tracing::info!(caller = %caller.name, network = %n.name, vni = n.vni, cidr = %n.cidr, "network created");
    Ok(created(format!("/api/v1/networks/{}", n.name), *n))
}

#[utoipa::path(get, path = "/api/v1/networks/{name}", tag = "networks",
    params(("name" = String, Path, description = "network name")),
    responses((status = 200, body = Network), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn show_network(
    State(state): State<AppState>,
    Path(n): Path<String>,
) -> Result<Json<Network>, ApiError> {
    let n: NetworkName = name(&n)?;
    state
        .app
        .store
        .network(&n)?
        .map(Json)
        .ok_or_else(|| not_found("network", n.as_str()))
}

#[utoipa::path(delete, path = "/api/v1/networks/{name}", tag = "networks",
    params(("name" = String, Path, description = "network name")),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn delete_network(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(n): Path<String>,
) -> Result<StatusCode, ApiError> {
    let n: NetworkName = name(&n)?;
    state.app.store.run(Op::DeleteNetwork(n.clone())).await?;
    tracing::info!(caller = %caller.name, network = %n, "network deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Every security group, in name order.
#[utoipa::path(get, path = "/api/v1/secgroups", tag = "networks",
    responses((status = 200, body = [SecurityGroup])), security(("bearer" = [])))]
pub(super) async fn list_secgroups(
    State(state): State<AppState>,
) -> Result<Json<Vec<SecurityGroup>>, ApiError> {
    Ok(Json(state.app.store.secgroups()?))
}

#[utoipa::path(get, path = "/api/v1/secgroups/{name}", tag = "networks",
    params(("name" = String, Path, description = "security group name")),
    responses((status = 200, body = SecurityGroup), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn show_secgroup(
    State(state): State<AppState>,
    Path(n): Path<String>,
) -> Result<Json<SecurityGroup>, ApiError> {
    let n: SecGroupName = name(&n)?;
    state
        .app
        .store
        .secgroup(&n)?
        .map(Json)
        .ok_or_else(|| not_found("security group", n.as_str()))
}

/// Create or replace a security group: its allow rules (everything else is dropped).
#[utoipa::path(put, path = "/api/v1/secgroups/{name}", tag = "networks",
    params(("name" = String, Path, description = "security group name")),
    request_body = SecurityGroup,
    responses((status = 200, body = SecurityGroup), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn put_secgroup(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(n): Path<String>,
    ApiJson(g): ApiJson<SecurityGroup>,
) -> Result<Json<SecurityGroup>, ApiError> {
    let n: SecGroupName = name(&n)?;
    if g.name != n {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "name",
            format!("the body names {} but the path {n}", g.name),
        ));
    }
    let Outcome::SecGroup(g) = state.app.store.run(Op::PutSecGroup(g)).await? else {
        unreachable!("PutSecGroup produces a group")
    };
    tracing::info!(caller = %caller.name, group = %g.name, rules = g.rules.len(), "security group set");
    Ok(Json(*g))
}

#[utoipa::path(delete, path = "/api/v1/secgroups/{name}", tag = "networks",
    params(("name" = String, Path, description = "security group name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn delete_secgroup(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(n): Path<String>,
) -> Result<StatusCode, ApiError> {
    let n: SecGroupName = name(&n)?;
    state.app.store.run(Op::DeleteSecGroup(n.clone())).await?;
    tracing::info!(caller = %caller.name, group = %n, "security group deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub(super) struct PortFilter {
    /// Only the ports of this network.
    network: Option<String>,
}

/// Every port (VM NICs on tenant networks and host-owned ports), in MAC order.
#[utoipa::path(get, path = "/api/v1/ports", tag = "networks", params(PortFilter),
    responses((status = 200, body = [Port]), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn list_ports(
    State(state): State<AppState>,
    axum::extract::Query(f): axum::extract::Query<PortFilter>,
) -> Result<Json<Vec<Port>>, ApiError> {
    let network: Option<NetworkName> = f.network.as_deref().map(name).transpose()?;
    let mut ports = state.app.store.ports()?;
    if let Some(n) = network {
        ports.retain(|p| p.network == n);
    }
    Ok(Json(ports))
}

/// Create a port that is no VM's NIC, wired by a host's agent: the host's interface named
/// `cp` + the MAC's hex digits is put on the network's bridge with the port's rules.
#[utoipa::path(post, path = "/api/v1/ports", tag = "networks", request_body = CreatePort,
    responses((status = 201, body = Port), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create_port(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(req): ApiJson<CreatePort>,
) -> Result<Response, ApiError> {
    let Outcome::Port(p) = state.app.store.run(Op::CreatePort(req)).await? else {
        unreachable!("CreatePort produces a port")
    };
    tracing::info!(caller = %caller.name, mac = %p.mac, network = %p.network, ip = %p.ip, "port created");
    Ok(created(format!("/api/v1/ports/{}", p.mac), *p))
}

#[utoipa::path(get, path = "/api/v1/ports/{mac}", tag = "networks",
    params(("mac" = String, Path, description = "the port's MAC")),
    responses((status = 200, body = Port), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn show_port(
    State(state): State<AppState>,
    Path(mac): Path<String>,
) -> Result<Json<Port>, ApiError> {
    let mac = parse_mac(&mac)?;
    state
        .app
        .store
        .port(mac)?
        .map(Json)
        .ok_or_else(|| not_found("port", &mac.to_string()))
}

/// Delete a host-owned port (a VM's port goes with its VM: 409).
#[utoipa::path(delete, path = "/api/v1/ports/{mac}", tag = "networks",
    params(("mac" = String, Path, description = "the port's MAC")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn delete_port(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mac = parse_mac(&mac)?;
    state.app.store.run(Op::DeletePort(mac)).await?;
    tracing::info!(caller = %caller.name, %mac, "port deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a port's security groups; its host applies them at its next reconcile.
#[utoipa::path(put, path = "/api/v1/ports/{mac}/security-groups", tag = "networks",
    params(("mac" = String, Path, description = "the port's MAC")), request_body = SetPortGroups,
    responses((status = 200, body = Port), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn set_port_groups(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
    ApiJson(req): ApiJson<SetPortGroups>,
) -> Result<Json<Port>, ApiError> {
    let mac = parse_mac(&mac)?;
    let Outcome::Port(p) = state
        .app
        .store
        .run(Op::SetPortGroups {
            mac,
            groups: req.security_groups,
        })
        .await?
    else {
        unreachable!("SetPortGroups produces a port")
    };
    tracing::info!(caller = %caller.name, %mac, groups = ?p.security_groups, "port security groups set");
    Ok(Json(*p))
}
