# SPDX-License-Identifier: GPL-3.0-or-later
"""Endpoints that serve a held session to other protocols (Ansible's persistent connection)."""
