local x = nil
return { name = x.y }
