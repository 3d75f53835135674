"""The exactly solvable lab: denoisers known in closed form (Gaussian data, the two-mode mixture
and the Curie-Weiss model of Aranguri et al.) and the stochastic interpolants they are sampled with."""
