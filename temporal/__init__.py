"""vidfeat.temporal"""
