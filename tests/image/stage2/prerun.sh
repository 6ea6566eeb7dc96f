#!/bin/bash -e
copy_previous
