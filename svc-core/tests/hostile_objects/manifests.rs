//! Objects as JSON manifests (as the model's own tests build them), printed compactly on failure.
use super::*;

// ---------------------------------------------------------------------------------------------
// Objects as JSON manifests (as the model's own tests build them), printed compactly on failure.

/// One object's manifest; `Debug` prints it as the JSON to put in a file to reproduce.
#[derive(Clone)]
pub(crate) struct Manifest(pub(crate) Value);

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The key a source would file the object under (an unnamed one under `""`: sources refuse
/// those, but the model must cope with whatever it is handed).
pub(crate) fn object_ref(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ObjectRef {
    ObjectRef::from_meta(meta).unwrap_or_else(|| {
        ObjectRef::new(meta.namespace.clone().unwrap_or_default(), String::new())
    })
}

pub(crate) fn to_service(m: &Manifest) -> Result<(ObjectRef, Service), TestCaseError> {
    let svc: Service = serde_json::from_value(m.0.clone())
        .map_err(|e| TestCaseError::fail(format!("generator made no Service: {e}: {m:?}")))?;
    Ok((object_ref(&svc.metadata), svc))
}

pub(crate) fn to_slice(m: &Manifest) -> Result<(ObjectRef, EndpointSlice), TestCaseError> {
    let slice: EndpointSlice = serde_json::from_value(m.0.clone())
        .map_err(|e| TestCaseError::fail(format!("generator made no EndpointSlice: {e}: {m:?}")))?;
    Ok((object_ref(&slice.metadata), slice))
}

pub(crate) fn objects(
    services: &[Manifest],
    slices: &[Manifest],
) -> Result<Objects, TestCaseError> {
    let mut o = Objects::default();
    for m in services {
        let (r, s) = to_service(m)?;
        o.services.insert(r, s);
    }
    for m in slices {
        let (r, s) = to_slice(m)?;
        o.slices.insert(r, s);
    }
    Ok(o)
}
