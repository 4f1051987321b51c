//! A service's endpoint: its published ports (defaults filled, free ones from the dynamic range
//! 30000-32767, none held twice) and one virtual IP per network it joins (none in dnsrr mode).

use super::{service_networks, Ipam};
use crate::state::ClusterState;
use shoal_api::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpecModeEnum, ServiceEndpoint, ServiceEndpointVirtualIps, ServiceSpec,
};
use shoal_api::objects::StoredService;
use shoal_api::ApiError;
use std::collections::HashMap;

/// Ports with defaults filled and free published ports assigned; refuses ports other services hold.
pub fn allocate_ports(
    spec: &ServiceSpec,
    me: &str,
    prev: Option<&ServiceEndpoint>,
    state: &ClusterState,
) -> std::result::Result<Vec<EndpointPortConfig>, ApiError> {
    let mut taken: HashMap<(i64, String), (String, String)> = HashMap::new();
    for s in state.services.values().filter(|s| s.obj.id() != me) {
        for p in s
            .obj
            .service
            .endpoint
            .iter()
            .flat_map(|e| e.ports.iter().flatten())
        {
            if let Some(pp) = p.published_port {
                taken.insert(
                    (pp, p.protocol.map(|x| x.to_string()).unwrap_or_default()),
                    (s.obj.name().to_string(), s.obj.id().to_string()),
                );
            }
        }
    }
    let mut out = Vec::new();
    for p in spec
        .endpoint_spec
        .iter()
        .flat_map(|e| e.ports.iter().flatten())
    {
        let mut p = p.clone();
        if p.protocol.is_none() || p.protocol == Some(EndpointPortConfigProtocolEnum::EMPTY) {
            p.protocol = Some(EndpointPortConfigProtocolEnum::TCP);
        }
        if p.publish_mode.is_none()
            || p.publish_mode == Some(EndpointPortConfigPublishModeEnum::EMPTY)
        {
            p.publish_mode = Some(EndpointPortConfigPublishModeEnum::INGRESS);
        }
        let proto = p.protocol.map(|x| x.to_string()).unwrap_or_default();
        if p.published_port.unwrap_or(0) == 0
            && p.publish_mode == Some(EndpointPortConfigPublishModeEnum::INGRESS)
        {
            let reuse = prev.and_then(|e| e.ports.as_ref()).and_then(|ps| {
                ps.iter()
                    .find(|o| o.target_port == p.target_port && o.protocol == p.protocol)
                    .and_then(|o| o.published_port)
            });
            let port = reuse.or_else(|| {
                (30000..=32767).find(|c| {
                    !taken.contains_key(&(*c, proto.clone()))
                        && !out
                            .iter()
                            .any(|o: &EndpointPortConfig| o.published_port == Some(*c))
                })
            });
            p.published_port = Some(port.ok_or_else(|| {
                ApiError::invalid_arg(
                    "EndpointSpec.Ports: no free port left in the dynamic range 30000-32767",
                )
            })?);
        }
        if let Some(pp) = p.published_port.filter(|x| *x > 0) {
            if let Some((name, sid)) = taken.get(&(pp, proto.clone())) {
                return Err(ApiError::invalid_arg(format!(
                    "port '{pp}' is already in use by service '{name}' ({sid}) as an ingress port"
                )));
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// The service's endpoint: its ports and one VIP per network (none in dnsrr mode).
pub fn endpoint(
    svc: &StoredService,
    state: &ClusterState,
    ipam: &mut Ipam,
) -> std::result::Result<ServiceEndpoint, ApiError> {
    let spec = svc.spec();
    let ports = allocate_ports(spec, svc.id(), svc.service.endpoint.as_ref(), state)?;
    let dnsrr =
        spec.endpoint_spec.as_ref().and_then(|e| e.mode) == Some(EndpointSpecModeEnum::DNSRR);
    if dnsrr
        && ports
            .iter()
            .any(|p| p.publish_mode == Some(EndpointPortConfigPublishModeEnum::INGRESS))
    {
        return Err(ApiError::invalid_arg(
            "EndpointSpec: port published with ingress mode can't be used with dnsrr mode",
        ));
    }
    let old: HashMap<String, String> = svc
        .service
        .endpoint
        .iter()
        .flat_map(|e| e.virtual_ips.iter().flatten())
        .filter_map(|v| Some((v.network_id.clone()?, v.addr.clone()?)))
        .collect();
    let mut vips = Vec::new();
    if !dnsrr {
        // The service with its final ports decides whether it sits on the ingress network.
        let mut probe = svc.clone();
        probe.service.endpoint = Some(ServiceEndpoint {
            ports: Some(ports.clone()),
            ..Default::default()
        });
        for (net, _, _) in service_networks(&probe, state) {
            let addr = match old.get(&net) {
                Some(a) => a.clone(),
                None => ipam.allocate(&net)?,
            };
            vips.push(ServiceEndpointVirtualIps {
                network_id: Some(net),
                addr: Some(addr),
            });
        }
    }
    Ok(ServiceEndpoint {
        spec: Some(shoal_api::models::EndpointSpec {
            mode: Some(if dnsrr {
                EndpointSpecModeEnum::DNSRR
            } else {
                EndpointSpecModeEnum::VIP
            }),
            ports: spec.endpoint_spec.as_ref().and_then(|e| e.ports.clone()),
        }),
        ports: if ports.is_empty() { None } else { Some(ports) },
        virtual_ips: if vips.is_empty() { None } else { Some(vips) },
    })
}
