"""Test helpers shared by the unit, wire and e2e layers: fakes at the edges we do not own."""
