"""A bank on goverse: Account objects that transfer money between them."""
