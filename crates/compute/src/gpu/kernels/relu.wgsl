// output = max(a, 0).

struct Params {
    len: u32,
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(id, groups);
    if i >= params.len {
        return;
    }
    output[i] = max(input_a[i], 0.0);
}
