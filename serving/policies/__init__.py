"""serving/policies"""
