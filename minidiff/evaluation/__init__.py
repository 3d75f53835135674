"""How good are the samples: `minidiff metrics` (a CPU quality measure with a small network trained
on the data: a classifier, or without labels one that names each image's quarter turn; and a check
for copies of training images), `minidiff fid` (FID with pytorch-fid) and `minidiff brightness-gain`
(how a network reads an image's brightness from the noise)."""
