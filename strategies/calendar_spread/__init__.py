"""The SPX calendar spread: leg selection (`legs`), combo pricing (`pricing`), the order walk
(`walk`) and the strategy that ties them together (`strategy`)."""
