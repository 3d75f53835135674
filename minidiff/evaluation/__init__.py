"""How good are the samples: `minidiff metrics` (a CPU quality measure with a small classifier),
`minidiff fid` (FID with pytorch-fid) and `minidiff brightness-gain` (how a network reads an
image's brightness from the noise)."""
