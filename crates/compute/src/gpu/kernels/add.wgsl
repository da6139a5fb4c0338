// output = a + b, where b repeats every `repeat` elements (its own length: the whole of a,
// or one row broadcast over a's rows).

struct Params {
    len: u32,
    repeat: u32,
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(id, groups);
    if i >= params.len {
        return;
    }
    output[i] = input_a[i] + input_b[i % params.repeat];
}
