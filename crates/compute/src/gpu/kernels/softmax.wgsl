// Softmax of each row of a [rows, width], one invocation per row: subtract the row's maximum
// (so exp cannot overflow), exponentiate, divide by the sum.

struct Params {
    rows: u32,
    width: u32,
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = flat_index(id, groups);
    if row >= params.rows {
        return;
    }
    let base = row * params.width;
    var largest = neg_infinity();
    for (var j = 0u; j < params.width; j++) {
        largest = max(largest, input_a[base + j]);
    }
    var sum = 0.0;
    for (var j = 0u; j < params.width; j++) {
        let e = exp(input_a[base + j] - largest);
        output[base + j] = e;
        sum += e;
    }
    for (var j = 0u; j < params.width; j++) {
        output[base + j] = output[base + j] / sum;
    }
}
