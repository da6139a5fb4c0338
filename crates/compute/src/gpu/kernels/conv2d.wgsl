// Stride-1 convolution of x [n, c, h, w] (input a) with filters [f, c, kh, kw] (input b) and
// `pad` zeros on every side, one invocation per output value of [n, f, oh, ow].

struct Params {
    len: u32,
    c: u32,
    h: u32,
    w: u32,
    f: u32,
    kh: u32,
    kw: u32,
    pad: u32,
    oh: u32,
    ow: u32,
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
    let out_channel = pixel.z % params.f;
    let image = pixel.z / params.f;
    var sum = 0.0;
    for (var ch = 0u; ch < params.c; ch++) {
        for (var ky = 0u; ky < params.kh; ky++) {
            let iy = i32(oy + ky) - i32(params.pad);
            if iy < 0 || iy >= i32(params.h) {
                continue;
            }
            for (var kx = 0u; kx < params.kw; kx++) {
                let ix = i32(ox + kx) - i32(params.pad);
                if ix < 0 || ix >= i32(params.w) {
                    continue;
                }
                let pixel = ((image * params.c + ch) * params.h + u32(iy)) * params.w + u32(ix);
                let weight = ((out_channel * params.c + ch) * params.kh + ky) * params.kw + kx;
                sum += input_a[pixel] * input_b[weight];
            }
        }
    }
    output[i] = sum;
}
