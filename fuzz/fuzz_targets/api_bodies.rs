//! Every API body decoder and the validators behind it, as the handlers chain them: the first
//! byte picks the endpoint, the rest is the body. Stack deploys are service creates (the docker
//! CLI parses the compose file and sends service specs), so `ServiceSpec` covers them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_api::models::{
    ConfigSpec, NetworkCreateRequest, NodeSpec, SecretSpec, SwarmInitRequest, SwarmJoinRequest,
    SwarmSpec,
};
use shoal_api::validate;
use shoal_manager::api::{parse_body, parse_service_spec};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            if let Ok(spec) = parse_service_spec(body) {
                let _ = validate::service_spec(&spec);
            }
        }
        1 => {
            if let Ok(spec) = parse_body::<SecretSpec>(body) {
                let _ = validate::object_name(spec.name.as_deref().unwrap_or(""));
            }
        }
        2 => {
            if let Ok(spec) = parse_body::<ConfigSpec>(body) {
                let _ = validate::object_name(spec.name.as_deref().unwrap_or(""));
            }
        }
        3 => {
            let _ = parse_body::<NodeSpec>(body);
        }
        4 => {
            if let Ok(spec) = parse_body::<SwarmSpec>(body) {
                let _ = validate::swarm_spec(&spec, "default");
            }
        }
        5 => {
            if let Ok(req) = parse_body::<SwarmInitRequest>(body) {
                if let Some(spec) = req.spec {
                    let _ = validate::swarm_spec(&spec, "default");
                }
            }
        }
        6 => {
            let _ = parse_body::<SwarmJoinRequest>(body);
        }
        _ => {
            if let Ok(req) = parse_body::<NetworkCreateRequest>(body) {
                let _ = validate::dns_name("Name", &req.name);
            }
        }
    }
});
