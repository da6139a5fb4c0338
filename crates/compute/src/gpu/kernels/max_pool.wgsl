// The maximum of each non-overlapping size×size window of x [n, c, h, w], one invocation per
// output value of [n, c, h / size, w / size].

struct Params {
    len: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    size: u32,
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(id, groups);
    if i >= params.len {
        return;
    }
    let pixel = pixel_of(i, params.ow, params.oh);
    let ox = pixel.x;
    let oy = pixel.y;
    let plane = pixel.z;
    var largest = neg_infinity();
    for (var dy = 0u; dy < params.size; dy++) {
        let row = plane * params.h * params.w + (oy * params.size + dy) * params.w;
        for (var dx = 0u; dx < params.size; dx++) {
            largest = max(largest, input_a[row + ox * params.size + dx]);
        }
    }
    output[i] = largest;
}
