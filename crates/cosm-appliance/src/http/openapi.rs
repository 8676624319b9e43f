//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations.

use super::{agents, catalog, images, machines, net, ops, power, vms};
use utoipa::OpenApi;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, generated from the handlers above.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "COSM appliance API", description = "Bare-metal provisioning and the cloud on it: machines, roles, role rules, timelines, virtual machines."),
    paths(
        ops::healthz, ops::metrics, ops::openapi_json,
        machines::list_machines, machines::create_machine, machines::show_machine,
        machines::update_machine, machines::delete_machine,
        machines::set_role, machines::set_state, machines::machine_events,
        catalog::list_roles, catalog::create_role, catalog::show_role, catalog::delete_role,
        catalog::list_rules, catalog::create_rule, catalog::show_rule, catalog::delete_rule,
        catalog::list_leases,
        machines::queue_action, agents::agent_enroll, agents::agent_heartbeat,
        agents::agent_desired, agents::agent_observed,
        catalog::list_tokens, catalog::create_token, catalog::delete_token,
        machines::machine_kickstart, machines::redeploy_machine, machines::reregister_machine, agents::agent_install_report, agents::agent_install_progress, catalog::set_install_method, images::set_manifest,
        images::list_images, images::show_image, images::upload_image,
        images::delete_image, images::download_image,
        vms::create_vm, vms::list_vms, vms::show_vm, vms::delete_vm, vms::start_vm, vms::stop_vm,
        vms::reboot_vm, vms::migrate_vm, vms::list_snapshots, vms::create_snapshot,
        vms::revert_snapshot, vms::delete_snapshot, vms::vm_console, vms::vm_events,
        vms::list_hosts, vms::agent_vms, vms::agent_image,
        power::show_power_settings, power::set_power_settings, power::clear_power_settings,
        power::power_status, power::power_action, power::list_alarms, power::list_evacuations,
        net::list_networks, net::create_network, net::show_network, net::delete_network,
        net::list_secgroups, net::show_secgroup, net::put_secgroup, net::delete_secgroup,
        net::list_ports, net::create_port, net::show_port, net::delete_port, net::set_port_groups,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "machines", description = "Machines by MAC: lifecycle, role, timeline"),
        (name = "roles", description = "Roles machines can play"),
        (name = "rules", description = "Rules that give discovered machines a role"),
        (name = "dhcp", description = "DHCP leases"),
        (name = "agents", description = "Node agents: enrolment, heartbeat, desired state"),
        (name = "tokens", description = "API tokens (admin only)"),
        (name = "images", description = "The image repository: installer kernels, initrds, ISOs"),
        (name = "vms", description = "Virtual machines on the hosts COSM provisioned: lifecycle, placement, snapshots, live migration"),
        (name = "power", description = "Power control through BMCs, host HA: alarms and evacuations"),
        (name = "networks", description = "Tenant networks (VXLAN) and security groups; host agents do not reconcile them yet"),
        (name = "operations", description = "Health, metrics, this document"),
    )
)]
pub struct ApiDoc;
