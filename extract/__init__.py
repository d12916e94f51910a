"""vidfeat.extract"""
